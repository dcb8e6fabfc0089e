"""``model.kind: vae``: a variational autoencoder (Kingma & Welling 2014) scored by its ELBO.

How it maps onto the adaptable stack: the stack is the *encoder* ``q(z | x)``, ending in the
``[μ, log σ²]`` of the latent code (``2k`` outputs); the *decoder* ``p(x | z)`` is a second network
that is meta-learned only. The inner loop therefore adapts inference per task, under a
generative model shared by all tasks (per-task refinement of amortised inference, as in
semi-amortised VAEs, Kim et al. 2018): the encoder learns where the task's normal rows sit in the
shared latent space, so that they cost little KL under the prior and reconstruct well, while rows
unlike them cost more. The sampling step sits between encoder and decoder, and each row is
decoded ``S`` times; the one inner loop's low-rank update needs one input and one output per row
and layer, which the decoder's ``S`` copies per row would break, so the decoder stays out of the
stack. Consequences: ANIL adapts the encoder's ``[μ, log σ²]`` layer; Meta-SGD learns rates for
the encoder; Reptile, which moves only what the inner loop adapts, leaves the decoder at its
initialisation (use a MAML-family learner for this kind).

Per row, with ``S`` fixed noise draws ``ε_s`` (a buffer drawn at construction, so scores are
deterministic and survive saving) and a unit-variance Gaussian decoder (features are scaled per
task), dropping the constant ``D/2 · log 2π``:

    rec_s = ½ ‖x - dec(μ + σ ⊙ ε_s)‖²,     KL = ½ Σ_j (μ_j² + σ_j² - 1 - log σ_j²),
    -ELBO_β = mean_s rec_s + β · KL                   (Kingma & Welling 2014, Eq. 10),
    -log RP = -log mean_s exp(-rec_s)                 (An & Cho 2015).

Both are non-negative. The inner loss is the one-class loss of the -ELBO on the support
normals: ``log mean_i(-ELBO_i)``, whose minimiser is the ELBO's and whose gradient is the ELBO's
divided by its value (a step size that does not depend on the data's scale). The score is the
-ELBO (``vae.score: elbo``) or -log RP (``reconstruction``); the outer loss ranks query
anomalies above normals by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from metakd.errors import ConfigError
from metakd.models.teachers.base import Reference, Teacher, register_kind
from metakd.models.teachers.config import ModelConfig


@dataclass
class VAEConfig:
    """The ``vae`` teacher."""

    beta: float = 1.0
    """Weight of the KL term in the (β-)ELBO the inner loop maximises and ``score: elbo``
    reports (Higgins et al. 2017; 1 is the ELBO itself)."""
    samples: int = 8
    """Monte-Carlo samples of the latent code per row. The noise is drawn once when the teacher
    is built and kept in its ``noise`` buffer, so scores are deterministic and survive saving."""
    score: Literal["elbo", "reconstruction"] = "elbo"
    """``elbo``: the negative β-ELBO per row. ``reconstruction``: the negative log of the
    reconstruction probability (An & Cho 2015), the mean likelihood of the row over the latent
    samples, without the KL term (the inner loop still maximises the ELBO)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"vae.beta must be a number >= 0, got {self.beta!r}")
        if isinstance(self.samples, bool) or self.samples < 1:
            raise ConfigError(f"vae.samples must be >= 1, got {self.samples!r}")


@register_kind("vae", settings=VAEConfig)
class VAETeacher(Teacher):
    """Encoder stack to ``[μ, log σ²]``, a meta-learned decoder, scored by -ELBO or -log RP."""

    use_when = (
        "negative ELBO or reconstruction probability; normal rows near a low-dimensional "
        "manifold with a density on it (MAML-family learners: Reptile leaves the decoder untrained)"
    )

    noise: Tensor
    """Buffer ``[S, k]``: the standard-normal draws of the latent samples, shared by all rows
    (common random numbers: score differences between rows carry no sampling noise)."""

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        k = config.embedding_dim
        super().__init__([input_dim, *config.hidden, 2 * k], activation=config.activation)
        sizes = [k, *reversed(config.hidden), input_dim]
        self.decoder = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        settings = config.section(VAEConfig)
        self.beta = settings.beta
        self.score = settings.score
        self.latent_dim = k
        self.register_buffer("noise", torch.randn(settings.samples, k))

    def decode(self, z: Tensor) -> Tensor:
        """Decoder means ``[..., D]`` of latent codes ``z [..., k]`` (the module's own weights)."""
        last = len(self.decoder) - 1
        for i, layer in enumerate(self.decoder):
            z = layer(z)
            if i < last:
                z = self.activation(z)
        return z

    def terms(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample reconstruction errors ``rec [..., S, N]`` and the KL ``[..., N]`` of rows
        ``x [..., N, D]`` from encoder outputs ``out [..., N, 2k]``."""
        mu, log_var = out[..., : self.latent_dim], out[..., self.latent_dim :]
        z = mu.unsqueeze(-3) + torch.exp(0.5 * log_var).unsqueeze(-3) * self.noise.unsqueeze(-2)
        rec = 0.5 * (x.unsqueeze(-3) - self.decode(z)).pow(2).sum(-1)
        kl = 0.5 * (mu.pow(2) + torch.exp(log_var) - 1.0 - log_var).sum(-1)
        return rec, kl

    def fit_scores(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        """The -ELBO_β per row, whatever the score: the inner loop maximises the ELBO."""
        rec, kl = self.terms(out, x)
        return rec.mean(-2) + self.beta * kl

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        if self.score == "elbo":
            return self.fit_scores(out, x, reference)
        rec, _ = self.terms(out, x)
        samples = rec.shape[-2]
        return math.log(samples) - torch.logsumexp(-rec, dim=-2)


__all__ = ["VAETeacher"]
