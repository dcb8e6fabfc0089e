"""Distillation fidelity, the deployable scorer and its TorchScript export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from metakd.distill import DistillConfig, distill, distillation_loss
from metakd.models.deploy import (
    DeployedScorer,
    Preprocessor,
    ScoreHead,
    StudentConfig,
    build_student,
)


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))


def test_student_reaches_high_fidelity_and_is_deterministic() -> None:
    teacher = _teacher()
    score = lambda x: teacher(x).squeeze(-1)  # noqa: E731
    g = torch.Generator().manual_seed(1)
    support = torch.randn(10, 8, generator=g)
    pool = torch.randn(300, 8, generator=g)
    config = DistillConfig(student=StudentConfig(hidden=[16], head="linear"), steps=300)
    with torch.no_grad():
        thr = float(score(pool).quantile(0.9))
    a = distill(score, support, torch.zeros(10), pool, teacher_threshold=thr, config=config, seed=0)
    b = distill(score, support, torch.zeros(10), pool, teacher_threshold=thr, config=config, seed=0)
    assert a.fidelity > 0.9
    for (ka, va), (kb, vb) in zip(
        a.student.state_dict().items(), b.student.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    assert a.history and all("fidelity" in h for h in a.history)


@pytest.mark.parametrize("augment_fraction", [0.0, 1.0])
def test_batches_of_only_real_or_only_augmented_rows(augment_fraction: float) -> None:
    teacher = _teacher()
    score = lambda x: teacher(x).squeeze(-1)  # noqa: E731
    g = torch.Generator().manual_seed(2)
    support, pool = torch.randn(10, 8, generator=g), torch.randn(200, 8, generator=g)
    config = DistillConfig(
        student=StudentConfig(hidden=[16], head="linear"),
        steps=60,
        augment_fraction=augment_fraction,
    )
    result = distill(
        score, support, torch.zeros(10), pool, teacher_threshold=0.0, config=config, seed=0
    )
    assert result.steps > 0 and result.fidelity > 0.5


def test_distance_student_follows_a_distance_teacher_off_the_data() -> None:
    """Trained on 40 rows near the data, the student must still rank rows far from them as the
    teacher does: that is where anomalies lie (augmentation + the distance head)."""
    g = torch.Generator().manual_seed(2)
    mix = torch.randn(12, 12, generator=g) / 12**0.5
    centre = torch.randn(12, generator=g)
    score = lambda x: torch.log(((x - centre) @ mix).pow(2).sum(-1) + 1e-6)  # noqa: E731
    support = centre + 0.5 * torch.randn(8, 12, generator=g)
    pool = centre + 0.5 * torch.randn(32, 12, generator=g)
    far = centre + 3.0 * torch.randn(200, 12, generator=g)  # never seen in distillation
    with torch.no_grad():
        thr = float(score(pool).quantile(0.9))
    config = DistillConfig(student=StudentConfig(hidden=[16], head="distance", input_skip=False))
    result = distill(
        score, support, torch.zeros(8), pool, teacher_threshold=thr, config=config, seed=0
    )
    with torch.no_grad():
        student_far = result.student(far).squeeze(-1)
    rho = spearmanr(student_far.numpy(), score(far).numpy()).statistic
    assert rho > 0.85


def test_auto_choices_follow_the_teacher() -> None:
    auto = StudentConfig()
    logit = auto.resolved(teacher_is_logit=True, teacher_skip=False)
    assert (logit.head, logit.input_skip) == ("linear", False)
    distance = auto.resolved(teacher_is_logit=False, teacher_skip=True)
    assert (distance.head, distance.input_skip) == ("distance", True)
    linear = StudentConfig(head="linear").resolved(teacher_is_logit=False, teacher_skip=True)
    assert (linear.head, linear.input_skip) == ("linear", False)
    with pytest.raises(ValueError, match="resolve"):
        build_student(4, auto)


def test_student_with_input_skip_follows_a_teacher_with_one() -> None:
    """A teacher whose score keeps the raw distance to a centre in all D = 400 directions (an
    input skip): a 16-wide embedding cannot carry it, the student's own skip term can."""
    d = 400
    g = torch.Generator().manual_seed(3)
    centre = torch.randn(d, generator=g)
    proj = torch.randn(d, 4, generator=g)
    score = lambda x: torch.log(  # noqa: E731
        (x - centre).pow(2).mean(-1) + ((x - centre) @ proj).pow(2).sum(-1) / d
    )
    support = centre + torch.randn(10, d, generator=g)
    pool = centre + torch.randn(60, d, generator=g)
    far = centre + 2.0 * torch.randn(300, d, generator=g) * torch.rand(300, 1, generator=g)
    with torch.no_grad():
        thr = float(score(pool).quantile(0.9))
    rho = {}
    for skip in (False, True):
        config = DistillConfig(student=StudentConfig(hidden=[16], head="distance", input_skip=skip))
        result = distill(
            score, support, torch.zeros(10), pool, teacher_threshold=thr, config=config, seed=0
        )
        with torch.no_grad():
            rho[skip] = spearmanr(result.student(far).squeeze(-1), score(far)).statistic
    assert rho[True] > 0.85 and rho[True] > rho[False] + 0.1


def test_distillation_loss_is_minimal_at_the_teacher() -> None:
    z = torch.linspace(-3, 3, 50)
    hard = (z > 1.0).float()
    kwargs = dict(threshold=1.0, alpha=0.5, temperature=2.0, regression_weight=1.0)
    at_teacher = distillation_loss(z.clone().requires_grad_(), z, hard, **kwargs)
    off = distillation_loss(z + 0.5, z, hard, **kwargs)
    assert off > at_teacher


def _scorer(head: str) -> DeployedScorer:
    torch.manual_seed(0)
    pre = Preprocessor(torch.randn(5), torch.rand(5) + 0.5, 10.0, torch.randn(5, 7))
    config = StudentConfig(hidden=[4], head=head, input_skip=head == "distance")  # type: ignore[arg-type]
    student = build_student(7, config)
    return DeployedScorer(pre, ScoreHead(student), 0.1).eval()


@pytest.mark.parametrize("head", ["linear", "distance"])
def test_torchscript_export_gives_identical_scores(tmp_path: Path, head: str) -> None:
    from metakd.exports import export_torchscript

    scorer = _scorer(head)
    path = tmp_path / "student.torchscript.pt"
    export_torchscript(scorer, path)
    x = torch.randn(20, 5)
    loaded = torch.jit.load(str(path))
    assert torch.equal(loaded(x), scorer(x))
    assert torch.equal(loaded.predict(x), scorer.predict(x))
    # It runs in a process that never imports metakd.
    code = (
        "import sys, torch; m = torch.jit.load(sys.argv[1]); "
        "assert 'metakd' not in sys.modules; print(m(torch.zeros(3, 5)).shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert "torch.Size([3])" in out.stdout


def test_preprocessor_without_projection_and_clipping() -> None:
    pre = Preprocessor(torch.zeros(3), torch.ones(3), 2.0, None)
    out = pre(torch.tensor([[1.0, -5.0, 9.0]]))
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 2.0]]))
