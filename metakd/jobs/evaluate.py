"""``metakd evaluate``: the benchmark of :mod:`metakd.evaluate` into a staged run folder."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from metakd.checkpoint import load_checkpoint
from metakd.errors import MetakdError
from metakd.evaluate import EvaluationResult, headline_gaps, load_evaluate_config, run_evaluation
from metakd.evaluate.baselines.transfer import POOLED_CACHE
from metakd.evaluate.config import EvaluateConfig
from metakd.evaluate.domains import run_domain_evaluation
from metakd.inputs import Inputs, collection_inputs
from metakd.rundir import staged_run_dir

__all__ = ["Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """A finished evaluation and its headline."""

    result: EvaluationResult
    headline: pd.DataFrame
    """Per setting, metakd's student against the best baseline (:func:`headline_gaps`)."""


def _inputs(config: EvaluateConfig, teacher_path: Path | None, config_path: str | None) -> Inputs:
    """What an evaluation reads: the teacher, the configs and the task collection (the
    teacher's own when the config names none)."""
    tasks, flag = config.tasks, "--tasks"
    if tasks is None and teacher_path is not None:
        with contextlib.suppress(MetakdError, OSError):  # loading the teacher reports it
            recorded = load_checkpoint(teacher_path, "teacher")["info"].get("tasks")
            if isinstance(recorded, str) and recorded:
                tasks, flag = recorded.removeprefix("builtin:"), "the teacher's tasks"
    return [
        ("--teacher", teacher_path),
        ("--config", config_path),
        ("train_config", config.train_config),
        *collection_inputs(flag, tasks),
    ]


def evaluate(
    *,
    teacher_path: Path | None,
    out_dir: Path,
    config_path: str | None,
    overrides: list[str],
    overwrite: bool,
    progress: bool,
) -> Evaluation:
    """Load the config (``--config``, ``--set``) and evaluate a meta-trained teacher
    (``teacher_path``) or, with ``folds``, leave the domains out in turn, in a staged run folder
    that becomes ``out_dir`` when it finished."""
    config = load_evaluate_config(config_path, overrides)
    if (config.folds is None) == (teacher_path is None):
        raise MetakdError(
            "give --teacher (evaluate a meta-trained teacher) or --folds with --tasks (leave "
            "domains out, a teacher meta-trained per fold), not both or neither"
        )
    # The pooled pre-training of a previous run into the same --out is reused (it is keyed by
    # its own settings and recomputed when they differ).
    with staged_run_dir(
        out_dir,
        command="evaluate",
        overwrite=overwrite,
        carry=(POOLED_CACHE,),
        inputs=_inputs(config, teacher_path, config_path),
    ) as stage:
        if teacher_path is None:
            result = run_domain_evaluation(config, out_dir=stage, progress=progress)
        else:
            result = run_evaluation(
                config, teacher_path=teacher_path, out_dir=stage, progress=progress
            )
    return Evaluation(result=result, headline=headline_gaps(result.summary))
