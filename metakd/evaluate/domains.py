"""Leave domains out: how metakd does on domains it was never meta-trained on, measured on a
user's own collection with one command (``metakd evaluate --tasks DIR --folds F``).

The collection's tasks (domains) are dealt into ``F`` folds, in natural name order: fold ``f``
holds out every ``F``-th domain from the ``f``-th. Per fold a teacher is meta-trained on the
other domains (a fifth of them validating, as ``metakd meta-train`` splits a folder; settings
from ``train_config`` and ``train``), then evaluated on the held-out domains exactly as
``metakd evaluate --teacher`` evaluates a teacher's held-out tasks: ``K`` normals and ``A``
anomalies in the support, an unlabelled pool and a labelled query, the baselines on the very
same rows. Every domain is held out once; the report pools them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from metakd.checkpoint import atomic_write_text
from metakd.config import load_train_config
from metakd.data.collection import load_collection, natural_key
from metakd.detect.pool_share import pool_share_fitter
from metakd.errors import ConfigError
from metakd.evaluate.config import EvaluateConfig
from metakd.evaluate.report import plot_auroc_vs_shots, summarise, summary_markdown
from metakd.evaluate.run import RESULT_COLUMNS, EvaluationResult, check_extras, run_evaluation
from metakd.train import meta_train

#: Share of each fold's training domains that validate its meta-training (meta-train's default).
VALIDATION_SHARE = 0.2


def fold_splits(names: list[str], folds: int, *, seed: int) -> list[dict[str, list[str]]]:
    """Per fold, ``{"train", "val", "test"}`` task names: ``test`` every ``folds``-th name in
    natural order from the fold's index, ``val`` a seeded fifth (at least one) of the rest."""
    ordered = sorted(names, key=natural_key)
    if not 2 <= folds <= len(ordered):
        raise ConfigError(
            f"folds={folds}: leave-domains-out needs 2 to {len(ordered)} folds for "
            f"{len(ordered)} domains"
        )
    splits = []
    for fold in range(folds):
        held = ordered[fold::folds]
        rest = [n for n in ordered if n not in held]
        n_val = max(1, round(VALIDATION_SHARE * len(rest))) if len(rest) >= 3 else 0
        shuffled = [rest[i] for i in np.random.default_rng([seed, fold]).permutation(len(rest))]
        val = sorted(shuffled[:n_val], key=natural_key)
        train = [n for n in rest if n not in val]
        splits.append({"train": train, "val": val, "test": held})
    return splits


def run_domain_evaluation(
    config: EvaluateConfig, *, out_dir: Path, progress: bool = True
) -> EvaluationResult:
    """Leave-domains-out evaluation of ``config.tasks`` in ``config.folds`` folds (module
    docstring). Each fold's teacher and evaluation go to ``out_dir/fold<f>/``; the pooled
    ``results.csv``, ``summary.md`` and ``auroc_vs_shots.png`` to ``out_dir``.

    Raises:
        ConfigError: no ``tasks`` or ``folds``, or folds that do not fit the collection.
    """
    if config.tasks is None or config.folds is None:
        raise ConfigError("leave-domains-out evaluation needs tasks (--tasks) and folds (--folds)")
    check_extras(config)  # before the first fold's meta-training, not after it
    start = time.perf_counter()
    tasks = load_collection(config.tasks).tasks
    names = [task.name for task in tasks]
    parts: list[pd.DataFrame] = []
    skipped: list[str] = []
    for fold, split in enumerate(fold_splits(names, config.folds, seed=config.seed)):
        fold_dir = out_dir / f"fold{fold}"
        overrides = [
            f"tasks={json.dumps(config.tasks)}",
            f"split.train_tasks={json.dumps(split['train'])}",
            f"split.val_tasks={json.dumps(split['val'])}",
            f"split.test_tasks={json.dumps(split['test'])}",
            f"tracking.mode={config.tracking.mode}",
            *config.train,
        ]
        train_config = load_train_config(config.train_config, overrides)
        meta_train(
            train_config,
            out_dir=fold_dir / "teacher",
            progress=progress,
            fit_pool_share=pool_share_fitter(train_config, progress=progress),
        )
        # The fold's teacher records its split: the evaluation takes its held-out domains.
        fold_config = dataclasses.replace(config, tasks=None, split="test", folds=None)
        result = run_evaluation(
            fold_config,
            teacher_path=fold_dir / "teacher" / "teacher.pt",
            out_dir=fold_dir,
            progress=progress,
        )
        parts.append(result.results.assign(fold=fold))
        skipped += [f"fold {fold}: {line}" for line in result.skipped]
    results = pd.concat(parts, ignore_index=True)
    summary = summarise(results)
    files = {
        "results": out_dir / "results.csv",
        "summary": out_dir / "summary.md",
        "plot": out_dir / "auroc_vs_shots.png",
    }
    atomic_write_text(files["results"], results.to_csv(index=False, float_format="%.6g"))
    heading = (
        f"Leave-domains-out: {config.folds} folds over the {len(names)} domains of "
        f"{config.tasks}; per fold a teacher meta-trained on the other folds' domains, evaluated "
        "on the fold's own.\n\n"
    )
    teachers = Path("fold*") / "teacher" / "teacher.pt"
    atomic_write_text(
        files["summary"],
        heading
        + summary_markdown(
            summary, config=config, teacher_path=teachers, tasks=tasks, skipped=skipped
        ),
    )
    plot_auroc_vs_shots(summary, files["plot"], results=results)
    return EvaluationResult(
        out_dir=out_dir,
        results=results[[*RESULT_COLUMNS, "fold"]],
        summary=summary,
        splits={},
        skipped=skipped,
        files=files,
        seconds=time.perf_counter() - start,
    )


__all__ = ["VALIDATION_SHARE", "fold_splits", "run_domain_evaluation"]
