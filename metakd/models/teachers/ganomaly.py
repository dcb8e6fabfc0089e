"""``model.kind: ganomaly``: an encoder-decoder-encoder scored by latent mismatch (GANomaly).

Akçay et al. 2018 ("GANomaly: Semi-Supervised Anomaly Detection via Adversarial Training"): a
generator ``G = (G_E, G_D)`` encodes a row to ``z = G_E(x)`` and decodes ``x̂ = G_D(z)``; a second
encoder gives ``ẑ = E(x̂)``. Trained on normal rows only, ``E`` learns to encode reconstructions of
normal rows as ``G_E`` encodes the rows, so the anomaly score is the latent mismatch
``A(x) = ‖z - ẑ‖`` (their L1 norm; here the mean of squares over the ``k`` latent dimensions,
the same as their latent loss ``L_enc``, so score and training energy share one smooth term).

How it maps onto the adaptable stack: the stack is ``G_E`` (``[D, *hidden, k]``), which the
inner loop adapts per task; ``G_D`` and ``E`` are meta-learned only (mirrored widths, the
bottleneck ``z`` linear, as the paper's). The inner loss is the one-class loss of the per-row
generator energy (:meth:`GANomalyTeacher.fit_scores`)

    w_con · mean_j (x_j - x̂_j)² + w_enc · mean_j (z_j - ẑ_j)²

(their contextual loss ``L_con``, an L1 norm there, and latent loss ``L_enc``; the weights are
``ganomaly.reconstruction_weight`` and ``ganomaly.latent_weight``), so adaptation fits the task's normal rows in reconstruction and
latent consistency, and the outer loss ranks query anomalies above normals by the score.

The adversarial term (their ``L_adv``) is meta-trained in the outer loop only
(:meth:`GANomalyTeacher.outer_term`): a discriminator ``D`` learns to tell the support's normal
rows from their reconstructions (BCE, the reconstructions held fixed), and the generator is
pulled to match ``D``'s features of the rows (``D`` held fixed). Each half sees the other as a
constant, so one optimiser step over all meta-parameters is a simultaneous GAN step; the inner
loop never sees ``D``. ``ganomaly.adversarial_weight: 0`` leaves ``D`` out. As with the VAE,
Reptile moves only the stack by its inner loop, so ``G_D`` and ``E`` learn only from the
adversarial term there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.errors import ConfigError
from metakd.models.stack import stack_forward
from metakd.models.teachers.base import Reference, Teacher, register_kind
from metakd.models.teachers.config import ModelConfig


def _linears(sizes: list[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))


@dataclass
class GANomalyConfig:
    """The ``ganomaly`` teacher's training energy."""

    reconstruction_weight: float = 50.0
    """Weight of the reconstruction error ``‖x - x̂‖²`` (per feature) in the energy the inner
    loop minimises on normal rows (Akçay et al. 2018's w_con = 50)."""
    latent_weight: float = 1.0
    """Weight of the latent mismatch ``‖z - ẑ‖²`` (per latent dimension), which is also the
    anomaly score (Akçay et al. 2018's w_enc = 1)."""
    adversarial_weight: float = 1.0
    """Weight of the adversarial feature-matching term (Akçay et al. 2018's w_adv = 1), in the
    outer loop only, with a discriminator meta-trained beside the generator; 0: no
    discriminator (the generator is trained by the meta-loss alone)."""

    def __post_init__(self) -> None:
        for name in ("reconstruction_weight", "latent_weight", "adversarial_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"ganomaly.{name} must be a number >= 0, got {value!r}")
        if self.reconstruction_weight + self.latent_weight == 0:
            raise ConfigError(
                "ganomaly.reconstruction_weight and ganomaly.latent_weight are both 0: the inner "
                "loop would have nothing to minimise"
            )


@register_kind("ganomaly", settings=GANomalyConfig)
class GANomalyTeacher(Teacher):
    """Encoder ``G_E`` (the stack), decoder ``G_D`` and second encoder ``E``; score
    ``mean_j (z_j - ẑ_j)²``."""

    use_when = (
        "latent mismatch of an encoder-decoder-encoder, its decoder and discriminator "
        "meta-trained adversarially in the outer loop only; normal rows near a low-dimensional "
        "manifold"
    )

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        encoder = [input_dim, *config.hidden, config.embedding_dim]
        super().__init__(encoder, activation=config.activation)
        self.decoder = _linears(encoder[::-1])
        self.encoder = _linears(encoder)
        settings = config.section(GANomalyConfig)
        self.reconstruction_weight = settings.reconstruction_weight
        self.latent_weight = settings.latent_weight
        self.adversarial_weight = settings.adversarial_weight
        # D: the encoder's widths, then one logit; its features are the last hidden layer's.
        self.discriminator = (
            _linears([input_dim, *config.hidden, 1]) if self.adversarial_weight > 0 else None
        )

    def _run(self, layers: nn.ModuleList, h: Tensor) -> Tensor:
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            h = layer(h)
            if i < last:
                h = self.activation(h)
        return h

    def terms(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row reconstruction error and latent mismatch ``[..., N]`` (means of squares) of
        rows ``x [..., N, D]`` with codes ``out = G_E(x) [..., N, k]``."""
        reconstruction = self._run(self.decoder, out)
        latent = self._run(self.encoder, reconstruction)
        return (x - reconstruction).pow(2).mean(-1), (out - latent).pow(2).mean(-1)

    def fit_scores(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        """The generator's energy per row: weighted reconstruction error plus latent mismatch."""
        reconstruction, latent = self.terms(out, x)
        return self.reconstruction_weight * reconstruction + self.latent_weight * latent

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        return self.terms(out, x)[1]

    def _discriminate(self, x: Tensor, *, frozen: bool) -> tuple[Tensor, Tensor]:
        """``D``'s features ``[..., N, h]`` and logits ``[..., N]`` of rows ``x`` (``frozen``:
        ``D``'s weights as constants)."""
        assert self.discriminator is not None
        h = x
        layers = [cast(nn.Linear, layer) for layer in self.discriminator]

        def params(layer: nn.Linear) -> tuple[Tensor, Tensor]:
            return (
                (layer.weight.detach(), layer.bias.detach())
                if frozen
                else (layer.weight, layer.bias)
            )

        for layer in layers[:-1]:
            h = self.activation(F.linear(h, *params(layer)))
        weight, bias = params(layers[-1])
        return h, F.linear(h, weight, bias).squeeze(-1)

    def outer_term(self, support_x: Tensor, support_y: Tensor) -> Tensor | None:
        """``w_adv · L_adv + L_D`` over the support's normal rows (``[B, n, d]``, labels
        ``[B, n]``) with the meta-parameters: feature matching ``mean ‖f(x) - f(G(x))‖²``
        against a fixed ``D``, plus ``D``'s BCE telling the rows (1) from their fixed
        reconstructions (0)."""
        if self.discriminator is None:
            return None
        weight = 1.0 - support_y
        total = weight.sum().clamp_min(1.0)
        out, _ = stack_forward(self.stack_params(), support_x, activation=self.activation)
        fake = self._run(self.decoder, out)
        real_features, _ = self._discriminate(support_x, frozen=True)
        fake_features, _ = self._discriminate(fake, frozen=True)
        matching = (real_features - fake_features).pow(2).mean(-1)
        _, real_logit = self._discriminate(support_x, frozen=False)
        _, fake_logit = self._discriminate(fake.detach(), frozen=False)
        bce = F.softplus(-real_logit) + F.softplus(fake_logit)
        return ((self.adversarial_weight * matching + bce) * weight).sum() / total


__all__ = ["GANomalyTeacher"]
