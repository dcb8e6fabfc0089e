"""Reading and writing teachers and adapted detectors (plain tensors and data; never code).

``teacher.pt`` (written by ``metakd meta-train``) loads into a :class:`TeacherBundle`; the
detectors ``metakd adapt`` writes (``teacher.pt``, ``student.pt``) load into a
:class:`~metakd.models.deploy.DeployedScorer` with :func:`load_scorer`; a scorer exports to
TorchScript with :func:`export_torchscript`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from metakd import configio
from metakd.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.errors import DataError, MetakdError
from metakd.meta.learners import Algorithm, InnerConfig
from metakd.models.deploy import (
    DeployedScorer,
    Preprocessor,
    ScoreHead,
    StudentConfig,
    build_student,
)
from metakd.models.profile import NeighbourProfile
from metakd.models.teachers import LogitScorer, ModelConfig, Teacher, build_teacher


@dataclass
class TeacherBundle:
    """A meta-trained teacher and the settings it must be adapted with."""

    teacher: Teacher
    model: ModelConfig
    inner: InnerConfig
    algorithm: Algorithm
    rates: list[Tensor]
    scaling: ScalingConfig
    alignment: AlignmentConfig
    info: dict[str, Any]
    path: str = ""

    @staticmethod
    def load(path: str | Path) -> TeacherBundle:
        """Load ``teacher.pt`` written by ``metakd meta-train`` (never runs code)."""
        data = load_checkpoint(path, "teacher")
        try:
            model = _stored_model_config(data["model"])
            teacher = build_teacher(int(data["input_dim"]), model)
            teacher.load_weights(data["state_dict"])
            return TeacherBundle(
                teacher=teacher.eval(),
                model=model,
                inner=configio.from_dict(InnerConfig, data["inner"]),
                algorithm=data["algorithm"],
                rates=list(data["rates"]),
                scaling=configio.from_dict(ScalingConfig, data["scaling"]),
                alignment=configio.from_dict(AlignmentConfig, data["alignment"]),
                info=dict(data["info"]),
                path=str(path),
            )
        except (KeyError, RuntimeError, MetakdError) as err:
            raise DataError(
                str(path), f"teacher checkpoint is incomplete or inconsistent ({err})"
            ) from None


# Checkpoints written before an option existed behaved as with the option off: a key missing from
# a stored config means that, whatever today's default is.
_MODEL_BEFORE_OPTIONS = {"input_skip": False, "pool_neighbours": False}
_STUDENT_BEFORE_OPTIONS = {"head": "linear", "input_skip": False}


def _stored_model_config(data: dict[str, Any]) -> ModelConfig:
    return configio.from_dict(ModelConfig, _MODEL_BEFORE_OPTIONS | data)


def _stored_student_config(data: dict[str, Any]) -> StudentConfig:
    return configio.from_dict(StudentConfig, _STUDENT_BEFORE_OPTIONS | data)


def save_scorer(
    path: Path,
    scorer: DeployedScorer,
    *,
    net: Literal["teacher", "student"],
    spec: dict[str, Any],
    state: dict[str, Tensor],
    info: dict[str, Any],
) -> None:
    """Atomically write a detector checkpoint: the net's spec and weights, the fitted
    preprocessing (scaling, projection, neighbourhood profile) and the threshold."""
    p = scorer.preprocess
    save_checkpoint(
        path,
        "detector",
        {
            "net": net,
            "spec": spec,
            "state_dict": {k: v.detach().cpu() for k, v in state.items()},
            "preprocess": {
                "center": p.center,
                "scale": p.scale,
                "clip": p.clip,
                "projection": p.projection if p.use_projection else None,
                "profile": (
                    {
                        "neighbours": p.profile.neighbours,
                        "clip": p.profile.clip,
                        "state": {k: v.detach().cpu() for k, v in p.profile.state_dict().items()},
                    }
                    if p.use_profile
                    else None
                ),
            },
            "threshold": scorer.threshold,
            "info": info,
        },
    )


def load_scorer(path: str | Path) -> DeployedScorer:
    """Load a detector written by ``metakd adapt`` (``teacher.pt`` or ``student.pt``)."""
    data = load_checkpoint(path, "detector")
    try:
        spec, pre = data["spec"], data["preprocess"]
        if data["net"] == "teacher":
            teacher = build_teacher(int(spec["input_dim"]), _stored_model_config(spec["model"]))
            teacher.load_weights(data["state_dict"])
            net: torch.nn.Module = LogitScorer(teacher)
        else:
            student = build_student(int(spec["input_dim"]), _stored_student_config(spec["student"]))
            student.load_state_dict(data["state_dict"])
            net = ScoreHead(student)
        profile = None
        if pre.get("profile") is not None:
            stored = pre["profile"]
            profile = NeighbourProfile.empty(
                neighbours=int(stored["neighbours"]),
                clip=float(stored["clip"]),
                n_features=int(pre["center"].shape[0]),
            )
            profile.load_references(stored["state"])
        preprocess = Preprocessor(
            pre["center"], pre["scale"], float(pre["clip"]), pre["projection"], profile
        )
        return DeployedScorer(preprocess, net, float(data["threshold"])).eval()
    except (KeyError, RuntimeError, MetakdError) as err:
        raise DataError(
            str(path), f"detector checkpoint is incomplete or inconsistent ({err})"
        ) from None


def export_torchscript(scorer: DeployedScorer, path: Path) -> None:
    """Atomically save ``scorer`` as TorchScript (loads with plain ``torch.jit.load``)."""
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but remains the format that runs without Python deps.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(scorer)
        atomic_write_bytes(path, lambda f: torch.jit.save(scripted, f))
