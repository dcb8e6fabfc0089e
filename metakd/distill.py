"""Per-task distillation of an adapted teacher into a small student.

The student learns the teacher's scores on the task's support and unlabelled pool, plus
augmented rows around them so it also matches the teacher between, around and beyond the data it
saw: mixup between rows with weights stretched past [0, 1] (so it also extrapolates along the
lines between rows), then Gaussian noise of a per-row scale drawn from a wide range (small noise
teaches the teacher's fine structure next to the data, large noise its growth away from the data,
where anomalies lie). The teacher labels every augmented row afresh, so the training set is
unbounded. Targets live on the teacher's *normalised* scale
``z = (logit - median) / IQR`` of the teacher's scores on the training rows, so the loss weights
do not depend on the teacher's score units.

Loss (Hinton et al. 2015, adapted to one anomaly logit):
``α · soft + (1 - α) · hard + β · regression`` where
soft = BCE(σ((s - z_τ)/T), σ((z - z_τ)/T)), hard = BCE with the teacher's thresholded labels
(true labels on the support rows), regression = MSE(asinh s, asinh z); ``z_τ`` is the teacher's threshold.
Training stops early on fidelity (Spearman correlation between student and teacher) measured on
a held-out part of the pool and on noisy copies of those held-out rows: the held-out pool alone is
mostly normal rows and says little about how the student ranks rows off the data, which is where
a student that fits the pool well can still disagree with the teacher.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.errors import ConfigError, check_int, check_number
from metakd.models.deploy import StudentConfig, build_student

ScoreFn = Callable[[Tensor], Tensor]


@dataclass
class DistillConfig:
    """Student training for one task."""

    student: StudentConfig = field(default_factory=StudentConfig)
    """Student architecture."""
    alpha: float = 0.5
    """Weight of the soft (teacher-probability) loss against the hard-label loss."""
    temperature: float = 2.0
    """Softening temperature T of the teacher's probabilities."""
    regression_weight: float = 1.0
    """β: weight of the MSE between student and normalised teacher scores."""
    steps: int = 1000
    """Maximum optimiser steps (early stopping usually ends sooner)."""
    batch_size: int = 256
    """Rows per step (a mix of real and augmented rows)."""
    lr: float = 1e-2
    """Adam step size for the student."""
    weight_decay: float = 1e-4
    """Adam weight decay."""
    mixup_alpha: float = 0.4
    """Beta(a, a) parameter of mixup between training rows (0 disables mixup)."""
    mixup_extrapolation: float = 0.5
    """Mixup weights ``λ ~ Beta(a, a)`` are stretched from [0, 1] to ``[-e, 1 + e]``, so mixed
    rows also lie beyond the two rows on the line through them (0: interpolation only)."""
    noise_std: list[float] = field(default_factory=lambda: [0.1, 2.0])
    """``[low, high]``: each augmented row gets Gaussian noise whose std, in scaled-feature units,
    is drawn log-uniformly from this range (``[0, 0]`` disables noise)."""
    augment_fraction: float = 0.5
    """Fraction of each batch that is augmented rather than real rows."""
    holdout_fraction: float = 0.2
    """Fraction of the pool held out to measure fidelity for early stopping."""
    fidelity_copies: int = 3
    """Noisy copies (noise as in training) of each held-out row added to the fidelity set."""
    eval_every: int = 25
    """Measure fidelity every this many steps."""
    patience: int = 5
    """Stop after this many fidelity checks without an improvement of at least ``min_delta``."""
    min_delta: float = 1e-3
    """Smallest rise of fidelity (Spearman) that counts as an improvement."""

    def __post_init__(self) -> None:
        for name in ("alpha", "augment_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        check_number("distill.temperature", self.temperature, low=0, low_open=True)
        check_number("distill.regression_weight", self.regression_weight, low=0)
        check_int("distill.steps", self.steps, low=1)
        check_int("distill.batch_size", self.batch_size, low=2)
        check_int("distill.eval_every", self.eval_every, low=1)
        check_int("distill.patience", self.patience, low=1)
        check_int("distill.fidelity_copies", self.fidelity_copies, low=0)
        check_number("distill.min_delta", self.min_delta, low=0)
        check_number("distill.mixup_alpha", self.mixup_alpha, low=0)
        check_number("distill.mixup_extrapolation", self.mixup_extrapolation, low=0)
        if (
            len(self.noise_std) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.noise_std)
            or not 0.0 <= self.noise_std[0] <= self.noise_std[1]
        ):
            raise ConfigError(
                f"noise_std must be [low, high] with 0 <= low <= high, got {self.noise_std}"
            )
        if (self.noise_std[0] == 0.0) != (self.noise_std[1] == 0.0):
            raise ConfigError(
                f"noise_std is drawn log-uniformly: both ends 0 or both > 0, got {self.noise_std}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


def distillation_loss(
    student: Tensor,
    teacher: Tensor,
    hard: Tensor,
    *,
    threshold: float,
    alpha: float,
    temperature: float,
    regression_weight: float,
) -> Tensor:
    """The distillation objective for one batch.

    Args:
        student: student scores ``[N]``.
        teacher: normalised teacher scores ``[N]``.
        hard: hard labels ``[N]`` in {0, 1}.
        threshold: the teacher's threshold on the normalised scale.
        alpha, temperature, regression_weight: see :class:`DistillConfig`.
    """
    soft_target = torch.sigmoid((teacher - threshold) / temperature)
    soft = F.binary_cross_entropy_with_logits((student - threshold) / temperature, soft_target)
    hard_loss = F.binary_cross_entropy_with_logits(student - threshold, hard)
    # asinh keeps the order but compresses the far tail, so a few extreme anomalies cannot
    # dominate the fit among the bulk of rows whose ranking matters most.
    regression = F.mse_loss(torch.asinh(student), torch.asinh(teacher))
    return alpha * soft + (1.0 - alpha) * hard_loss + regression_weight * regression


@dataclass
class DistillResult:
    """A trained student and how it got there."""

    student: nn.Module
    fidelity: float
    """Spearman correlation with the teacher on the held-out pool rows (on all rows if none)."""
    steps: int
    history: list[dict[str, float]]
    """``{"step", "loss", "fidelity"}`` at every fidelity check."""
    offset: float
    scale: float
    """The student's units: it learns ``z = (logit − offset) / scale`` of the teacher's logits."""


def _normaliser(values: Tensor) -> tuple[float, float]:
    median = float(values.median())
    q75, q25 = (float(v) for v in torch.quantile(values, values.new_tensor([0.75, 0.25])))
    return median, max(q75 - q25, 1e-6)


def distill(
    teacher: ScoreFn,
    support_x: Tensor,
    support_y: Tensor,
    pool_x: Tensor | None,
    *,
    teacher_threshold: float,
    config: DistillConfig,
    seed: int,
    support_scores: Tensor | None = None,
    pool_scores: Tensor | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
) -> DistillResult:
    """Train a student to reproduce ``teacher`` on one task.

    Args:
        teacher: maps preprocessed rows ``[N, D]`` to logit-scale scores ``[N]`` (no grad needed).
        support_x: preprocessed support rows ``[n, D]``; support_y: ``[n]`` float labels.
        pool_x: preprocessed unlabelled rows ``[m, D]`` or ``None``.
        teacher_threshold: the teacher's decision threshold on its logit scale.
        config: distillation settings.
        seed: seeds the student's initialisation, batches and augmentation.
        support_scores, pool_scores: the teacher's scores ``[n]``, ``[m]`` of the support and pool
            rows themselves, when they differ from ``teacher`` on those rows: a teacher whose
            reference holds these rows scores them leave-one-out (a row is not its own
            neighbour), as it would score a new row there. Default: ``teacher`` of the rows.
        on_eval: called with ``(step, loss, fidelity)`` at every fidelity check (progress).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    pool = pool_x if pool_x is not None else support_x.new_zeros(0, support_x.shape[1])
    with torch.no_grad():
        s_support = teacher(support_x) if support_scores is None else support_scores
        s_pool = teacher(pool) if pool_scores is None or pool_x is None else pool_scores
    order = torch.randperm(pool.shape[0], generator=gen)
    n_hold = int(round(config.holdout_fraction * pool.shape[0])) if pool.shape[0] >= 10 else 0
    held_out, pool_train = pool[order[:n_hold]], pool[order[n_hold:]]
    train_x = torch.cat([support_x, pool_train])
    raw = torch.cat([s_support, s_pool[order[n_hold:]]])
    offset, scale = _normaliser(raw)

    def target(x: Tensor) -> Tensor:
        with torch.no_grad():
            return (teacher(x) - offset) / scale

    z_train = (raw - offset) / scale
    z_threshold = (teacher_threshold - offset) / scale
    # Hard labels: true labels on the support, the teacher's decisions elsewhere.
    n_support = support_x.shape[0]
    hard_train = (z_train > z_threshold).float()
    hard_train[:n_support] = support_y
    augment = functools.partial(
        _augment,
        mixup_alpha=config.mixup_alpha,
        extrapolation=config.mixup_extrapolation,
        noise_std=(config.noise_std[0], config.noise_std[1]),
        gen=gen,
    )
    if n_hold > 0:
        fidelity_x, z_fidelity = held_out, (s_pool[order[:n_hold]] - offset) / scale
    else:
        fidelity_x, z_fidelity = train_x, z_train
    noisy_x = torch.cat(
        [fidelity_x[:0]]
        + [
            augment(fidelity_x, len(fidelity_x), mixup_alpha=0.0)
            for _ in range(config.fidelity_copies)
        ]
    )
    fidelity_x = torch.cat([fidelity_x, noisy_x])
    z_fidelity = torch.cat([z_fidelity, target(noisy_x)])

    student = build_student(train_x.shape[1], config.student).to(train_x.device)
    # foreach: one fused update over the student's few tensors; per-tensor Python overhead is
    # most of a step's cost for a network this small.
    optimiser = torch.optim.Adam(
        student.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
    )
    n_aug = int(round(config.augment_fraction * config.batch_size))
    n_real = config.batch_size - n_aug
    best_state, best_fidelity, stale = copy.deepcopy(student.state_dict()), -2.0, 0
    history: list[dict[str, float]] = []
    step = 0
    for step in range(1, config.steps + 1):
        i = (step - 1) % config.eval_every
        if i == 0:
            # Draw and label the rows of the next eval_every steps at once: one teacher call per
            # chunk instead of one per step, the per-call overhead being most of its cost here.
            chunk = min(config.eval_every, config.steps - step + 1)
            real_chunk = torch.randint(train_x.shape[0], (chunk, n_real), generator=gen)
            x_aug_chunk = augment(train_x, chunk * n_aug).view(chunk, n_aug, train_x.shape[1])
            z_aug_chunk = target(x_aug_chunk.flatten(0, 1)).view(chunk, n_aug)
        real, x_aug, z_aug = real_chunk[i], x_aug_chunk[i], z_aug_chunk[i]
        x = torch.cat([train_x[real], x_aug])
        z = torch.cat([z_train[real], z_aug])
        hard = torch.cat([hard_train[real], (z_aug > z_threshold).float()])
        loss = distillation_loss(
            student(x).squeeze(-1),
            z,
            hard,
            threshold=z_threshold,
            alpha=config.alpha,
            temperature=config.temperature,
            regression_weight=config.regression_weight,
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % config.eval_every == 0 or step == config.steps:
            fidelity = _fidelity(student, fidelity_x, z_fidelity)
            history.append({"step": step, "loss": loss.item(), "fidelity": fidelity})
            if on_eval is not None:
                on_eval(step, history[-1]["loss"], fidelity)
            if fidelity > best_fidelity + config.min_delta:
                best_state, best_fidelity, stale = copy.deepcopy(student.state_dict()), fidelity, 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    student.load_state_dict(best_state)
    student.eval()
    return DistillResult(
        student=student,
        fidelity=best_fidelity,
        steps=step,
        history=history,
        offset=offset,
        scale=scale,
    )


def _augment(
    x: Tensor,
    n: int,
    *,
    mixup_alpha: float,
    extrapolation: float,
    noise_std: tuple[float, float],
    gen: torch.Generator,
) -> Tensor:
    """``n`` rows around the data ``x [N, D]``: mixup of random pairs (if enabled) with weights
    in ``[-extrapolation, 1 + extrapolation]``, plus Gaussian noise whose per-row std is
    log-uniform in ``noise_std``."""
    if n == 0:
        return x[:0]
    out = x[torch.randint(x.shape[0], (n,), generator=gen)]
    if mixup_alpha > 0:
        partner = x[torch.randint(x.shape[0], (n,), generator=gen)]
        # torch.distributions samplers take no generator; draw Beta(a, a) from a seeded numpy rng.
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=gen)))
        lam = torch.from_numpy(rng.beta(mixup_alpha, mixup_alpha, size=(n, 1))).to(x)
        lam = lam * (1.0 + 2.0 * extrapolation) - extrapolation
        out = lam * out + (1.0 - lam) * partner
    low, high = noise_std
    if high > 0:
        # Drawn on the CPU generator, then moved: the same rows on every device.
        u = torch.rand(n, 1, generator=gen, dtype=x.dtype).to(x.device)
        std = low * (high / low) ** u
        out = out + std * torch.randn(out.shape, generator=gen, dtype=x.dtype).to(x.device)
    return out


def _fidelity(student: nn.Module, x: Tensor, z: Tensor) -> float:
    with torch.no_grad():
        s = student(x).squeeze(-1)
    if x.shape[0] < 3 or float(z.std()) == 0.0:
        return float("nan")
    # Imported here: scipy.stats costs a second at start-up, and scoring never distils.
    from scipy.stats import spearmanr

    rho = spearmanr(s.cpu().numpy(), z.cpu().numpy()).statistic
    return float(rho) if np.isfinite(rho) else 0.0
