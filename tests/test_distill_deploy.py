"""Distillation fidelity, the deployable scorer and its TorchScript export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
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
    config = DistillConfig(student=StudentConfig(hidden=[16]), steps=300)
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


def test_distillation_loss_is_minimal_at_the_teacher() -> None:
    z = torch.linspace(-3, 3, 50)
    hard = (z > 1.0).float()
    kwargs = dict(threshold=1.0, alpha=0.5, temperature=2.0, regression_weight=1.0)
    at_teacher = distillation_loss(z.clone().requires_grad_(), z, hard, **kwargs)
    off = distillation_loss(z + 0.5, z, hard, **kwargs)
    assert off > at_teacher


def _scorer(tmp_path: Path) -> DeployedScorer:
    torch.manual_seed(0)
    pre = Preprocessor(torch.randn(5), torch.rand(5) + 0.5, 10.0, torch.randn(5, 7))
    return DeployedScorer(pre, ScoreHead(build_student(7, StudentConfig(hidden=[4]))), 0.1).eval()


def test_torchscript_export_gives_identical_scores(tmp_path: Path) -> None:
    from metakd.adapt import export_torchscript

    scorer = _scorer(tmp_path)
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
