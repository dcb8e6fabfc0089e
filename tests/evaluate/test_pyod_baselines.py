"""PyOD's detectors as evaluation baselines: registered names, fits on a tiny task, equality
with PyOD called directly, leak-free scoring, determinism, no dependence on what is installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch
from pyod.models.ecod import ECOD
from pyod.models.knn import KNN
from sklearn.metrics import roc_auc_score

from metakd.data.transforms import Scaler, ScalingConfig
from metakd.detector import AdaptConfig
from metakd.evaluate import REGISTRY, BaselineConfig, Detector, EvaluateConfig, MethodContext
from metakd.evaluate.baselines.pyod import PyODDetector
from metakd.evaluate.baselines.supervised import DevNetSettings
from metakd.persist import TeacherBundle

KINDS = ("knn", "iforest", "lof", "ecod", "copod")
PYOD_METHODS = tuple(f"{kind}-{source}" for source in ("support", "pool") for kind in KINDS)
FEATURES = 4


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """DevNet fits with one torch thread, as ``metakd evaluate`` runs it (``threads: 1``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _rows(rng: np.random.Generator, normals: int, anomalies: int) -> np.ndarray:
    """Standard normal rows, then ``anomalies`` rows shifted by 6 in every feature."""
    x = rng.normal(size=(normals + anomalies, FEATURES))
    x[normals:] += 6.0
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def task() -> dict[str, np.ndarray]:
    """An easy few-shot split: 5 support normals (+ 2 anomalies), a pool of 60 rows with 3
    anomalies, a query of 100 normals and 20 anomalies."""
    rng = np.random.default_rng(0)
    support = np.concatenate([_rows(rng, 5, 0), _rows(rng, 0, 2)])
    return {
        "xs": support,
        "ys": np.array([0] * 5 + [1] * 2),
        "xp": rng.permutation(_rows(rng, 57, 3)),
        "xq": _rows(rng, 100, 20),
        "yq": np.array([0] * 100 + [1] * 20),
    }


def _built(name: str, *, seed: int = 0) -> Detector:
    """The detector that ``metakd evaluate`` builds for ``name`` in repetition ``seed``."""
    # The PyOD baselines only read the teacher's scaling from the bundle.
    bundle = cast(TeacherBundle, SimpleNamespace(scaling=ScalingConfig()))
    method = REGISTRY.get(name)
    context = MethodContext(
        bundle=bundle,
        adapt=AdaptConfig(),
        # DevNet's 200 default steps are more than this easy task needs.
        baselines=BaselineConfig(sections={"devnet": DevNetSettings(steps=50)}),
        seed=seed,
        repetition=seed,
        selected=(method,),
    )
    return method.build(context)


def _scores(name: str, task: dict[str, np.ndarray], *, seed: int = 0) -> np.ndarray:
    detector = _built(name, seed=seed).fit(task["xs"], task["ys"], unlabeled=task["xp"])
    return detector.decision_function(task["xq"])


def test_every_pyod_detector_is_registered_on_support_and_on_pool() -> None:
    for name in PYOD_METHODS:
        method = REGISTRY.get(name)
        assert method.group == name.split("-")[1] and method.needs_pool == name.endswith("-pool")
        assert not method.needs_anomalies and method.is_baseline


@pytest.mark.parametrize("name", [*PYOD_METHODS, "devnet"])
def test_baseline_detects_well_separated_anomalies_and_is_deterministic(
    name: str, task: dict[str, np.ndarray]
) -> None:
    scores = _scores(name, task)
    assert scores.shape == (len(task["xq"]),) and np.isfinite(scores).all()
    assert roc_auc_score(task["yq"], scores) >= 0.8, name
    np.testing.assert_array_equal(_scores(name, task), scores)


@pytest.mark.parametrize("name", ["iforest-support", "iforest-pool", "devnet"])
def test_stochastic_baselines_follow_the_repetition_seed(
    name: str, task: dict[str, np.ndarray]
) -> None:
    assert not np.array_equal(_scores(name, task, seed=0), _scores(name, task, seed=1))


def _scaled(rows: np.ndarray, fit: np.ndarray) -> np.ndarray:
    return Scaler.fit(torch.from_numpy(fit), ScalingConfig())(torch.from_numpy(rows)).numpy()


def test_knn_support_is_pyods_knn_on_the_support_normals(task: dict[str, np.ndarray]) -> None:
    # Scaling fitted on support + pool; 5 normals leave PyOD 4 neighbours (n_neighbors <= n - 1).
    fit = np.concatenate([task["xs"], task["xp"]])
    normals = task["xs"][task["ys"] == 0]
    expected = (
        KNN(n_neighbors=4).fit(_scaled(normals, fit)).decision_function(_scaled(task["xq"], fit))
    )
    np.testing.assert_array_equal(_scores("knn-support", task), expected)


def test_knn_pool_is_pyods_knn_on_the_pool(task: dict[str, np.ndarray]) -> None:
    # Scaling fitted on the pool alone; PyOD's default of 5 neighbours.
    xp = task["xp"]
    expected = KNN().fit(_scaled(xp, xp)).decision_function(_scaled(task["xq"], xp))
    np.testing.assert_array_equal(_scores("knn-pool", task), expected)


def test_a_single_support_normal_scores_by_the_distance_to_it(
    task: dict[str, np.ndarray],
) -> None:
    one = task["xs"][:1]
    detector = PyODDetector("knn", source="support", scaling=ScalingConfig(), seed=0).fit(
        one, np.zeros(1), unlabeled=task["xp"]
    )
    fit = np.concatenate([one, task["xp"]])
    distance = np.linalg.norm(_scaled(task["xq"], fit) - _scaled(one, fit), axis=1)
    np.testing.assert_allclose(detector.decision_function(task["xq"]), distance, rtol=1e-5)
    lof = PyODDetector("lof", source="support", scaling=ScalingConfig(), seed=0).fit(
        one, np.zeros(1), unlabeled=task["xp"]
    )
    assert np.isfinite(lof.decision_function(task["xq"])).all()


@pytest.mark.parametrize("kind", ["ecod", "copod"])
def test_empirical_cdf_detectors_score_each_row_on_the_fitted_rows_alone(
    kind: str, task: dict[str, np.ndarray]
) -> None:
    """PyOD's ECOD and COPOD refit their CDFs on every row scored together; the baselines
    score row by row, so a query row's score never depends on the rest of the query."""
    detector = _built(f"{kind}-support").fit(task["xs"], task["ys"], unlabeled=task["xp"])
    scores = detector.decision_function(task["xq"])
    alone = [detector.decision_function(task["xq"][i : i + 1])[0] for i in (0, 7, 110)]
    np.testing.assert_array_equal(scores[[0, 7, 110]], alone)
    assert np.array_equal(scores[110:], detector.decision_function(task["xq"][110:]))


def test_pyods_ecod_scores_a_batch_on_the_batch_itself(task: dict[str, np.ndarray]) -> None:
    """Why the baselines score row by row: PyOD's own call changes a row's score with the batch."""
    ecod = ECOD().fit(task["xs"][:5])
    assert ecod.decision_function(task["xq"])[0] != ecod.decision_function(task["xq"][:1])[0]


def test_the_method_list_needs_no_pyod_import_at_registration() -> None:
    """The registry lists every PyOD baseline without importing PyOD (numba's start-up is paid
    only when one is fitted), so the default methods cannot depend on what is installed."""
    script = textwrap.dedent(
        """
        import json, sys

        class NoPyOD:
            tried = []

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("pyod", "numba"):
                    self.tried.append(name)
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, NoPyOD())
        from metakd.evaluate import EvaluateConfig, REGISTRY

        names = EvaluateConfig().resolved_methods()
        print(json.dumps({"names": names, "tried": NoPyOD.tried}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tried"] == []
    assert result["names"] == EvaluateConfig().resolved_methods()
    assert set(PYOD_METHODS) <= set(result["names"])
