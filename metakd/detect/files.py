"""A fitted detector's files: ``teacher.pt``, and with a student ``student.pt``,
``student.torchscript.pt`` and ``student.onnx``, each with where it came from and how raw files
become its rows (the exports as their metadata: :func:`metakd.exports.read_export_contract`)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from metakd import configio
from metakd.errors import MetakdError
from metakd.exports import (
    export_onnx,
    export_torchscript,
    onnx_available,
    warn_onnx_unavailable,
)
from metakd.models.deploy import DeployedScorer
from metakd.models.teachers import Teacher
from metakd.persist import InputSchema, TeacherBundle, save_scorer


def write_detector(
    out_dir: Path,
    *,
    bundle: TeacherBundle,
    teacher: Teacher,
    teacher_scorer: DeployedScorer,
    student: nn.Module | None,
    student_scorer: DeployedScorer | None,
    student_config: Any,
    schema: InputSchema,
) -> dict[str, Path]:
    """Write a fitted detector into ``out_dir`` (created): the adapted teacher, and the student
    when there is one. ``student.onnx`` needs ``pip install "metakd[onnx]"``: without it the rest
    is written and a warning says so. Returns the paths by role."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # What a saved detector carries besides its weights: where it came from, and how raw files
    # become its input rows (columns, windows), so `metakd score` reads them alike.
    info = {
        "teacher_checkpoint": bundle.path,
        "window": bundle.window,
        "input": dataclasses.asdict(schema),
    }
    paths = {"teacher": out_dir / "teacher.pt"}
    save_scorer(
        paths["teacher"],
        teacher_scorer,
        net="teacher",
        spec={"model": configio.to_dict(bundle.model), "input_dim": teacher.input_dim},
        state=teacher.state_dict(),
        info=info,
    )
    if student is None or student_scorer is None:
        return paths
    paths["student"] = out_dir / "student.pt"
    save_scorer(
        paths["student"],
        student_scorer,
        net="student",
        spec={"student": configio.to_dict(student_config), "input_dim": teacher.input_dim},
        state=student.state_dict(),
        info=info,
    )
    paths["torchscript"] = out_dir / "student.torchscript.pt"
    # The exports carry their contract (columns, threshold, windows: exports.export_contract).
    export_torchscript(student_scorer, paths["torchscript"], schema=schema, window=bundle.window)
    onnx_path = out_dir / "student.onnx"
    if onnx_available():
        try:
            export_onnx(student_scorer, onnx_path, schema=schema, window=bundle.window)
            paths["onnx"] = onnx_path
        except MetakdError as err:
            # An optional export: the detector (student.pt, TorchScript) stands without it.
            onnx_path.unlink(missing_ok=True)  # never an earlier student's beside this one
            warnings.warn(f"student.onnx is not written: {err}", stacklevel=3)
    else:
        onnx_path.unlink(missing_ok=True)  # an earlier student's, not this one's
        warn_onnx_unavailable()
    return paths


__all__ = ["write_detector"]
