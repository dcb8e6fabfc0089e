"""The evaluation benchmark: outputs, every method, disjoint leak-free splits, skips, baselines."""

from __future__ import annotations

import ast
import graphlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

import metakd
from metakd import configio
from metakd.checkpoint import load_checkpoint
from metakd.cli import main
from metakd.config import TrainConfig
from metakd.data.builtin import digits_collection
from metakd.data.task import Task
from metakd.data.transforms import ScalingConfig
from metakd.episodes import EpisodeConfig
from metakd.errors import ConfigError, DataError, InputError
from metakd.evaluate import (
    METHODS,
    NEEDS_ANOMALIES,
    REGISTRY,
    RESULT_COLUMNS,
    EvaluateConfig,
    EvaluationResult,
    _metric_table,
    draw_split,
    headline_gaps,
    load_evaluate_config,
    run_evaluation,
    summarise,
)
from metakd.evaluate.baselines.pyod import PyODDetector
from metakd.evaluate.baselines.supervised import DevNetDetector, LogRegDetector
from metakd.evaluate.baselines.transfer import load_or_pretrain_pooled
from metakd.evaluate.methods import GROUPS, Detector, MethodRegistry
from metakd.evaluate.settings import PretrainConfig
from metakd.persist import TeacherBundle
from metakd.train import meta_train

MakeTask = Callable[..., Task]
SHOTS, ANOMALY_SHOTS, UNSERVABLE = 5, 2, 500  # digits tasks hold ~180 normals: K=500 is skipped


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny teacher meta-trained for 20 iterations on the built-in digits collection."""
    config = configio.from_dict(
        TrainConfig,
        {
            "tasks": "digits",
            "iterations": 20,
            "val_every": 10,
            # An MLP teacher (the others are covered elsewhere): every run must score.
            "model": {"kind": "mlp", "hidden": [32, 16]},
            "episode": {
                "shots": 10,
                "query_size": 32,
                "query_anomaly_fraction": 0.25,
                "pool_size": 16,
                "meta_batch": 4,
            },
            "tracking": {"mode": "disabled"},
        },
    )
    out = tmp_path_factory.mktemp("teacher")
    meta_train(config, out_dir=out, progress=False)
    return out / "teacher.pt"


def _config(**overrides: object) -> EvaluateConfig:
    data = {
        "shots": [SHOTS, UNSERVABLE],
        "anomaly_shots": [0, ANOMALY_SHOTS],
        "seeds": 1,
        "pool_size": 32,
        "adapt": {"distill": {"steps": 60}},
        "baselines": {"devnet": {"steps": 30}, "pyod": {"iforest_trees": 20}},
        "pretrain": {"iterations": 10},
        "tracking": {"mode": "disabled"},
    }
    return configio.from_dict(EvaluateConfig, data | overrides)


@pytest.fixture(scope="module")
def evaluation(
    teacher_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[EvaluationResult, list[str]]:
    out = tmp_path_factory.mktemp("evaluation")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_evaluation(_config(), teacher_path=teacher_path, out_dir=out, progress=False)
    return result, [str(w.message) for w in caught]


def test_writes_outputs_with_every_method(evaluation: tuple[EvaluationResult, list[str]]) -> None:
    result, _ = evaluation
    for name in ("results.csv", "summary.md", "auroc_vs_shots.png", "config.yaml", "metrics.jsonl"):
        assert (result.out_dir / name).is_file(), name
    assert (result.out_dir / "auroc_vs_shots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(result.files["results"])
    assert tuple(table.columns) == RESULT_COLUMNS
    assert set(table["method"]) == set(METHODS)
    assert set(table["task"]) == {"digit-7", "digit-8", "digit-9"}  # the teacher's meta-test tasks
    # Every method once per run; anomaly-label methods only where the support has anomalies.
    per_run = table.groupby(["task", "shots", "anomaly_shots", "seed"])["method"].apply(set)
    for (_, _, anomaly_shots, _), methods in per_run.items():
        expected = set(METHODS) - (set(NEEDS_ANOMALIES) if anomaly_shots == 0 else set())
        assert methods == expected
    assert table["auroc"].between(0, 1).all() and table["auprc"].between(0, 1).all()
    assert (table["fit_seconds"] >= 0).all()
    summary = result.files["summary"].read_text()
    assert "**" in summary and "metakd-student vs the best baseline" in summary


def test_run_summary_holds_the_mean_over_runs(
    evaluation: tuple[EvaluationResult, list[str]],
) -> None:
    """auroc/<method> is also the per-run curve's key, whose last value W&B would otherwise
    keep as the summary: the summary records the mean over every run instead."""
    result, _ = evaluation
    lines = (result.out_dir / "metrics.jsonl").read_text().splitlines()
    (summary,) = [json.loads(line)["summary"] for line in lines if '"summary"' in line]
    table = pd.read_csv(result.files["results"])
    for method in METHODS:
        runs = table.loc[table["method"] == method, "auroc"]
        assert summary[f"auroc/{method}"] == pytest.approx(runs.mean(), abs=1e-5), method
    assert "auroc/knn-support/K5-A0" in summary


def test_splits_are_disjoint_and_match_the_results(
    evaluation: tuple[EvaluationResult, list[str]],
) -> None:
    result, _ = evaluation
    tasks = {t.name: t for t in digits_collection()}
    table = result.results
    assert len(result.splits) == len(table.groupby(["task", "shots", "anomaly_shots", "seed"]))
    for (name, shots, anomaly_shots, seed), split in result.splits.items():
        y = tasks[name].y
        parts = [split.support, split.pool, split.query]
        assert sum(len(p) for p in parts) == len(np.unique(np.concatenate(parts)))
        assert (y[split.support[:shots]] == 0).all() and (y[split.support[shots:]] == 1).all()
        assert len(split.support) == shots + anomaly_shots
        assert set(np.unique(y[split.query])) == {0, 1}
        rows = table[
            (table["task"] == name)
            & (table["shots"] == shots)
            & (table["anomaly_shots"] == anomaly_shots)
            & (table["seed"] == seed)
        ]
        assert (rows["n_support"] == len(split.support)).all()
        assert (rows["n_pool"] == len(split.pool)).all()
        assert (rows["n_query"] == len(split.query)).all()
        assert (rows["n_query_anomalies"] == int((y[split.query] == 1).sum())).all()


def test_unservable_settings_are_skipped_with_a_warning(
    evaluation: tuple[EvaluationResult, list[str]],
) -> None:
    result, messages = evaluation
    assert UNSERVABLE not in set(result.results["shots"])
    for task in ("digit-7", "digit-8", "digit-9"):
        for anomaly_shots in (0, ANOMALY_SHOTS):
            needle = f"{task}: skipping shots={UNSERVABLE}, anomaly_shots={anomaly_shots}"
            assert any(m.startswith(needle) for m in messages), needle
            assert any(line.startswith(needle) for line in result.skipped)
    assert "Skipped settings" in result.files["summary"].read_text()


def test_pooled_pretraining_is_reused_only_when_it_matches(
    evaluation: tuple[EvaluationResult, list[str]], teacher_path: Path
) -> None:
    result, _ = evaluation
    path = result.out_dir / "pooled_pretrain.pt"
    cached = TeacherBundle.load(path)
    bundle = TeacherBundle.load(teacher_path)
    episode = configio.from_dict(EpisodeConfig, load_checkpoint(teacher_path, "teacher")["episode"])
    names = bundle.info["splits"]["train"]
    train = [t for t in digits_collection() if t.name in names]
    provenance = {"tasks": "builtin:digits", "train_tasks": names}
    steps: list[int] = []

    def pooled(iterations: int) -> TeacherBundle:
        return load_or_pretrain_pooled(
            path,
            bundle,
            train,
            episode=episode,
            config=PretrainConfig(iterations=iterations),
            provenance=provenance,
            on_step=lambda i, loss: steps.append(i),
        )

    reused = pooled(10)
    assert steps == []
    for a, b in zip(reused.teacher.parameters(), cached.teacher.parameters(), strict=True):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    pooled(3)
    assert steps == [1, 2, 3]


def test_draw_split_is_disjoint_nested_and_deterministic(make_task: MakeTask) -> None:
    task = make_task(normals=300, anomalies=40, unlabelled=20, seed=1)
    common = dict(pool_size=50, query_max=100, min_query_per_class=5)
    small = draw_split(task, shots=5, anomaly_shots=1, seed=7, **common)
    large = draw_split(task, shots=10, anomaly_shots=3, seed=7, **common)
    again = draw_split(task, shots=10, anomaly_shots=3, seed=7, **common)
    other = draw_split(task, shots=10, anomaly_shots=3, seed=8, **common)
    for split in (small, large):
        parts = [split.support, split.pool, split.query]
        assert len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts)
        assert (task.y[split.query] != -1).all()  # unlabelled rows only ever go to the pool
        assert len(split.pool) == 50 and len(split.query) == 100  # capped, stratified
    # Unlabelled rows fill the pool first; labelled rows keep the task's class ratio.
    assert (task.y[large.pool] == -1).sum() == 20
    assert 10 <= (task.y[large.query] == 1).sum() <= 12
    assert set(small.support[:5]) <= set(large.support[:10])
    assert set(small.support[5:]) <= set(large.support[10:])
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            (large.support, large.pool, large.query),
            (again.support, again.pool, again.query),
            strict=True,
        )
    )
    assert not np.array_equal(large.query, other.query)


def test_draw_split_refuses_a_task_too_small_for_the_setting(make_task: MakeTask) -> None:
    task = make_task("tiny", normals=30, anomalies=6)
    with pytest.raises(DataError, match="tiny.*anomaly_shots=2"):
        draw_split(
            task,
            shots=5,
            anomaly_shots=2,
            pool_size=0,
            query_max=100,
            min_query_per_class=5,
            seed=0,
        )


def test_classical_baselines_detect_shifted_anomalies(make_task: MakeTask) -> None:
    task = make_task(normals=200, anomalies=40, features=4, seed=3)
    split = draw_split(
        task, shots=10, anomaly_shots=3, pool_size=40, query_max=1000, min_query_per_class=5, seed=0
    )
    xs, ys = task.X[split.support], task.y[split.support]
    xp, xq, yq = task.X[split.pool], task.X[split.query], task.y[split.query]
    scaling = ScalingConfig()
    detectors: dict[str, Detector] = {
        f"{kind}-{source}": PyODDetector(
            kind, source=source, scaling=scaling, seed=0, n_estimators=50
        )
        for kind in ("knn", "iforest", "lof", "ecod", "copod")
        for source in ("support", "pool")
    }
    detectors["logreg-support"] = LogRegDetector(c=1.0, scaling=scaling, seed=0)
    detectors["devnet"] = DevNetDetector(steps=100, scaling=scaling, seed=0)
    for name, detector in detectors.items():
        scores = detector.fit(xs, ys, unlabeled=xp).decision_function(xq)
        assert scores.shape == (len(xq),)
        assert roc_auc_score(yq, scores) > 0.9, name
    again = DevNetDetector(steps=100, scaling=scaling, seed=0).fit(xs, ys, unlabeled=xp)
    np.testing.assert_array_equal(
        again.decision_function(xq), detectors["devnet"].decision_function(xq)
    )


def test_baselines_reject_inputs_they_cannot_use(make_task: MakeTask) -> None:
    task = make_task(normals=30, anomalies=5)
    normals = task.X[task.y == 0]
    with pytest.raises(InputError, match="logreg-support needs labelled anomalies"):
        LogRegDetector(c=1.0, scaling=ScalingConfig(), seed=0).fit(normals, np.zeros(len(normals)))
    with pytest.raises(InputError, match="knn-pool"):
        PyODDetector("knn", source="pool", scaling=ScalingConfig(), seed=0).fit(
            normals, np.zeros(len(normals))
        )
    with pytest.raises(
        InputError, match="support labels must be 0 .normal. or 1 .anomaly.; found 2"
    ):
        DevNetDetector(scaling=ScalingConfig(), seed=0).fit(normals, np.full(len(normals), 2))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"methods": ["knn-support", "lof"]}, "unknown method 'lof'"),
        ({"shots": [0, 5]}, "shots must be integers >= 1"),
        ({"anomaly_shots": [1, 1]}, "anomaly_shots lists a value twice"),
        ({"methods": ["metakd-student"], "adapt": {"student": False}}, "adapt.student is false"),
        ({"methods": ["knn-pool"], "pool_size": 0}, "knn-pool, which needs pool_size > 0"),
    ],
)
def test_config_errors_name_the_culprit(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)


#: The built-in methods, in report order: metakd's (the headline first), then the baselines.
BUILTIN_METHODS = (
    "metakd-student",
    "metakd-teacher",
    "teacher-no-adapt",
    "scratch",
    "pooled-finetune",
    "knn-support",
    "iforest-support",
    "lof-support",
    "ecod-support",
    "copod-support",
    "knn-pool",
    "iforest-pool",
    "lof-pool",
    "ecod-pool",
    "copod-pool",
    "logreg-support",
    "devnet",
)


def test_registry_contains_the_built_in_methods_in_report_order() -> None:
    names = REGISTRY.names()
    assert names == METHODS
    # The built-ins are registered (a contributor's method may add to them), in report order,
    # and the headline comes first.
    assert set(BUILTIN_METHODS) <= set(names)
    assert [name for name in names if name in BUILTIN_METHODS] == list(BUILTIN_METHODS)
    assert names[0] == REGISTRY.headline().name == "metakd-student"
    groups = [GROUPS.index(m.group) for m in REGISTRY.methods()]
    assert groups == sorted(groups)
    baselines = set(REGISTRY.baselines())
    assert set(BUILTIN_METHODS[3:]) <= baselines and not baselines & set(BUILTIN_METHODS[:3])
    assert set(NEEDS_ANOMALIES) & set(BUILTIN_METHODS) == {"logreg-support", "devnet"}


def test_no_module_of_the_evaluation_is_imported_back_by_one_it_imports() -> None:
    """The layering of ``metakd.evaluate`` (its package docstring): no import cycle, even one
    that only a function-level import would close."""
    root = Path(metakd.__file__).parent
    names = {
        ".".join(("metakd", *path.relative_to(root).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): path
        for path in [*(root / "evaluate").rglob("*.py"), root / "baselines.py"]
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        imported = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                imported |= {t for t in targets if t in names} or {node.module} & names.keys()
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names} & names.keys()
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_registering_a_taken_name_is_refused() -> None:
    registry = MethodRegistry()
    registry.register(
        "mine",
        group="support",
        build=lambda context: LogRegDetector(c=1.0, scaling=ScalingConfig(), seed=0),
    )
    with pytest.raises(ValueError, match="'mine' is registered twice"):
        registry.register("mine", group="pool", build=registry.get("mine").build)
    with pytest.raises(ValueError, match="unknown group"):
        registry.register("other", group="nowhere", build=registry.get("mine").build)  # type: ignore[arg-type]


def test_an_unknown_method_is_a_config_error_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown method 'lof'") as caught:
        _config(methods=["lof"])
    assert all(name in str(caught.value) for name in METHODS)


def test_train_dotted_overrides_add_to_the_fold_teachers_overrides() -> None:
    """``--set train.KEY=VALUE`` reaches the fold teachers' meta-train config as a section's key
    would, after (so over) the ``train`` list's own entries."""
    config = load_evaluate_config(
        None, ['train=["iterations=4", "seed=1"]', "train.iterations=10", "train_config=x.yaml"]
    )
    assert config.train == ["iterations=4", "seed=1", "iterations=10"]
    assert config.train_config == "x.yaml"
    assert load_evaluate_config(None, ["train.model.hidden=[8]"]).train == ["model.hidden=[8]"]


def test_default_methods_follow_the_config() -> None:
    assert _config().resolved_methods() == list(METHODS)
    without = _config(adapt={"student": False}, pool_size=0).resolved_methods()
    assert "metakd-student" not in without and "knn-pool" not in without and "scratch" in without


def test_failed_runs_are_counted_and_never_best() -> None:
    rows = [
        {"task": f"t{i}", "shots": 5, "anomaly_shots": 0, "seed": 0, "method": method}
        | {"auroc": auroc, "auprc": auroc}
        for i in range(3)
        for method, auroc in (("metakd-student", 0.99 if i else float("nan")), ("knn-support", 0.7))
    ]
    summary = summarise(pd.DataFrame(rows))
    student = summary[summary["method"] == "metakd-student"].iloc[0]
    assert (student["n"], student["failed"], student["auroc"]) == (2, 1, pytest.approx(0.99))
    gaps = headline_gaps(summary)
    assert gaps.iloc[0]["student_failed"] == 1 and gaps.iloc[0]["best_baseline"] == "knn-support"
    table = "\n".join(_metric_table(summary, "auroc", 0))
    assert "**0.700 ± 0.000**" in table and "0.990 ± " in table and "(failed 1/3)" in table
    assert "**0.990" not in table


def test_leave_domains_out_meta_trains_a_teacher_per_fold(npz_dir: Path, tmp_path: Path) -> None:
    """`metakd evaluate --tasks DIR --folds 2`: every domain is held out once, by a teacher
    meta-trained on the other fold's domains, never on its own."""
    from metakd.evaluate.domains import fold_splits

    out = tmp_path / "domains"
    args = [
        "evaluate",
        "--tasks",
        str(npz_dir),
        "--folds",
        "2",
        "--shots",
        "5",
        "--anomaly-shots",
        "0",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--tracking",
        "disabled",
        "--set",
        "methods=[metakd-teacher,knn-support]",
        "--set",
        "pool_size=8",
        "--set",
        "min_query_per_class=2",
        "--set",
        'train=["iterations=4", "model.hidden=[8]", "model.embedding_dim=4", '
        '"episode.meta_batch=2", "episode.query_size=8", "episode.pool_size_max=null"]',
        "--set",
        "train.val_every=2",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "results.csv")
    names = ["1_alpha", "2_beta", "3_delta", "10_gamma", "20_eps"]
    assert sorted(set(table["task"])) == sorted(names)
    for fold, split in enumerate(fold_splits(names, 2, seed=0)):
        teacher = torch.load(out / f"fold{fold}" / "teacher" / "teacher.pt", weights_only=True)
        splits = teacher["info"]["splits"]
        assert splits["test"] == split["test"] and set(table[table["fold"] == fold]["task"]) == set(
            split["test"]
        )
        assert not set(splits["train"]) & set(split["test"]), "never trained on its held-out"
        # Each fold's teacher carries the pool Gaussian's share fitted on its own meta-train
        # domains, as `metakd meta-train` stores it.
        assert teacher["pool_share"] == teacher["pool_share_fit"]["share"]
        # `--set train.val_every=2` reached the fold's meta-train config beside the list's keys.
        trained = yaml.safe_load((out / f"fold{fold}" / "teacher" / "config.yaml").read_text())
        assert (trained["val_every"], trained["iterations"]) == (2, 4)
    assert (out / "summary.md").read_text().startswith("Leave-domains-out: 2 folds")
    refused = CliRunner().invoke(
        main, ["evaluate", "--tasks", str(npz_dir), "--out", str(tmp_path / "x")]
    )
    assert refused.exit_code == 2 and "--teacher" in refused.output
