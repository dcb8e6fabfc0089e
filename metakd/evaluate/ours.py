"""metakd's own methods in the evaluation, declared like any baseline.

``metakd-student`` and ``metakd-teacher`` are the two detectors of one adaptation of the
meta-trained teacher, exactly as ``metakd adapt`` runs it
(:class:`~metakd.detector.FewShotDetector`, distilling only when the student is evaluated): they
share one fit per split.
``teacher-no-adapt`` is the ablation that scores with the meta-trained teacher unadapted.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import numpy as np
import torch

from metakd.detect import AdaptConfig, FewShotDetector
from metakd.evaluate.baselines.transfer import TeacherDetector
from metakd.evaluate.methods import Detector, Method, MethodContext
from metakd.persist import TeacherBundle

#: Key of the shared adaptation in :attr:`MethodContext.shared`.
_SHARED = "metakd.evaluate.ours"


class _Adaptation:
    """One adaptation (and distillation) of a split, fitted by whichever of its detectors is
    fitted first and reused by the other."""

    def __init__(self, bundle: TeacherBundle, *, config: AdaptConfig) -> None:
        self.bundle = bundle
        self.config = config
        self.detector: FewShotDetector | None = None
        self.seconds = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None) -> FewShotDetector:
        """The fitted detector; fits it on the first call (every call passes the same split)."""
        if self.detector is None:
            tick = time.perf_counter()
            self.detector = FewShotDetector(self.bundle, config=self.config).fit(
                X, y, unlabeled=unlabeled
            )
            self.seconds = time.perf_counter() - tick
        return self.detector


def _adaptation(context: MethodContext) -> _Adaptation:
    """The split's shared adaptation, created on first use."""
    if _SHARED not in context.shared:
        # Distil only when a method that scores with the student runs: it is the costly part.
        distil = any(method.needs_student for method in context.selected)
        config = dataclasses.replace(
            context.adapt, student=distil, seed=context.adapt.seed + context.repetition
        )
        context.shared[_SHARED] = _Adaptation(context.bundle, config=config)
    adaptation: _Adaptation = context.shared[_SHARED]
    return adaptation


class MetakdDetector(Detector):
    """The student or the adapted teacher of a split's shared adaptation.

    Args:
        adaptation: the split's adaptation.
        output: which of its detectors scores.
    """

    def __init__(self, adaptation: _Adaptation, *, output: Literal["student", "teacher"]) -> None:
        self.adaptation = adaptation
        self.output = output

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> MetakdDetector:
        self.detector_ = self.adaptation.fit(X, y, unlabeled)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(X))
        with torch.no_grad():
            if self.output == "student":
                assert self.detector_.student_scorer_ is not None  # distilled: see _adaptation
                return self.detector_.student_scorer_(x).numpy()
            return self.detector_.teacher_scorer_(x).numpy()

    def fit_seconds(self) -> float:
        """The adaptation's time; the teacher's leaves out distillation, which is the student's."""
        if self.output == "student":
            return self.adaptation.seconds
        timings = self.detector_.report_["timings"]
        return self.adaptation.seconds - timings.get("distill_seconds", 0.0)


def _unadapted(context: MethodContext) -> Detector:
    adapt = context.adapt
    # Zero inner steps: the meta-trained teacher unadapted (still on the split's own scaling).
    return TeacherDetector(
        context.bundle, config=dataclasses.replace(adapt, inner=adapt.inner | {"steps": 0})
    )


METHODS: tuple[Method, ...] = (
    Method(
        "metakd-student",
        group="ours",
        needs_student=True,
        headline=True,
        build=lambda context: MetakdDetector(_adaptation(context), output="student"),
    ),
    Method(
        "metakd-teacher",
        group="ours",
        build=lambda context: MetakdDetector(_adaptation(context), output="teacher"),
    ),
    Method("teacher-no-adapt", group="ablation", build=_unadapted),
)


__all__ = ["METHODS", "MetakdDetector"]
