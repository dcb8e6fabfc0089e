"""``model:``: the teacher's architecture and each kind's own settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from metakd.errors import ConfigError
from metakd.models.profile import ProfileConfig


@dataclass
class GaussianConfig:
    """The ``gaussian`` teacher's fit (:mod:`metakd.models.gaussian`)."""

    pool: bool = True
    """The task's unlabelled pool rows join the support normals in the Gaussian's fit, except
    the ``pool_trim`` share of them that lie farthest from the support normals' own Gaussian
    (possible anomalies). Few-shot supports hold far fewer rows than the embedding has
    dimensions; the mostly normal pool makes the covariance much better determined."""
    pool_trim: float = 0.2
    """Fraction of the pool, the rows with the largest distance under the support normals'
    Gaussian, left out of the fit."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.pool_trim < 1.0:
            raise ConfigError(f"gaussian.pool_trim must be in [0, 1), got {self.pool_trim!r}")


@dataclass
class VAEConfig:
    """The ``vae`` teacher (:mod:`metakd.models.vae`)."""

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


@dataclass
class GANomalyConfig:
    """The ``ganomaly`` teacher's training energy (:mod:`metakd.models.ganomaly`)."""

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


@dataclass
class ModelConfig:
    """Architecture of the teacher."""

    kind: str = "profile"
    """``profile`` (default): starts as the hedge of kNN to the support normals and kNN density
    in the unlabelled pool, read from each row's neighbourhood profile
    (:mod:`metakd.models.profile`), and meta-learns what to add: a learned metric's support and
    pool distances, per-task trust in each evidence from task statistics, and a residual on the
    profile. Its inputs do not depend on a domain's feature count or units, so the teacher adapts
    to tasks of any width. ``svdd``: embedding scored by squared distance to the centre of the support normals'
    embeddings (Deep SVDD, Ruff et al. 2018; a prototype, so it starts useful and generalises
    best in our held-out measurements); ``knn``: mean distance to the k nearest support normals'
    embeddings (a meta-learned metric); ``autoencoder``: reconstruction error; ``mlp``:
    x → anomaly logit (OC-MAML, Frikha et al. 2021). ``gaussian``: squared Mahalanobis distance
    of the embedding to a Ledoit–Wolf-shrunk Gaussian of the support normals (and trimmed pool);
    for domains where normal rows vary together, so joint deviations matter more than distance
    to any one neighbour. ``vae``: negative ELBO of a variational autoencoder (Kingma & Welling
    2014; or reconstruction probability, An & Cho 2015) whose encoder adapts per task; for
    normal rows near a low-dimensional manifold with a density on it. ``ganomaly``: latent
    mismatch of an encoder-decoder-encoder (Akçay et al. 2018; its adversarial term in the outer
    loop only); for normal rows that a shared generator reconstructs and anomalies it does not."""
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    """Hidden layer widths (for ``autoencoder``, ``vae`` and ``ganomaly``, the encoder's; the
    decoder mirrors them)."""
    embedding_dim: int = 32
    """Output width of ``knn``, ``svdd`` and ``gaussian``, bottleneck of ``autoencoder``, latent
    width of ``vae`` and ``ganomaly`` (unused by ``mlp``)."""
    neighbours: int = 5
    """k of the ``knn`` head (fewer when the support has fewer normals)."""
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    """Elementwise activation between layers."""
    input_skip: bool = True
    """Distance heads (``knn``, ``svdd``, ``gaussian``) embed a row as ``[γ·x/√D, φ(x)]``: the scaled input next
    to the network's embedding, with a meta-learned weight ``γ`` (initially 1). The detector
    starts close to plain kNN (centre distance) on the scaled features, and the raw distances
    anchor it against meta-overfitting when there are few meta-train tasks: meta-trained on
    digits 0-5, held-out digits 7-9 stayed at 0.93-0.94 AUROC for 300 iterations with it and fell
    from 0.93 to 0.64 without it; on MVTec (6 meta-train categories) held-out AUROC rose from
    0.78 to 0.81. Measurements in benchmarks/RESULTS.md."""
    pool_neighbours: bool = True
    """``knn`` head: the task's unlabelled pool rows join the support normals as neighbours, their
    distances multiplied by a meta-learned factor ``c = exp(ρ)`` (initially 1). The pool is many
    more rows than the support and mostly normal; ``c`` learns how far to trust it, which depends
    on how contaminated pools are across tasks (large ``c`` ignores it)."""

    pool_rows: int | None = 32
    """Pool rows a teacher's embedding reads (the ``profile`` teacher's pool evidence in its
    learned metric, ``knn``'s pool neighbours): a random subsample of the pool, in
    meta-training and in ``metakd adapt`` alike, so an adapted teacher meets the reference it
    was meta-trained with whatever the size of the domain's pool (and its inner loop costs the
    same). The profile's own pool evidence still reads up to ``profile.max_pool`` rows, and
    every pool row is still scored. Null: every pool row (teachers saved before this option)."""
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    """Neighbourhood profile of the ``profile`` teacher (unused by the other kinds)."""
    residual_hidden: int = 32
    """``profile`` teacher: hidden width of the residual network on the profile."""
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    """The ``gaussian`` teacher's use of the pool (unused by the other kinds)."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """The ``vae`` teacher's β, latent samples and score (unused by the other kinds)."""
    ganomaly: GANomalyConfig = field(default_factory=GANomalyConfig)
    """The ``ganomaly`` teacher's training energy (unused by the other kinds)."""

    def input_profile(self) -> ProfileConfig | None:
        """The neighbourhood profile this kind reads after the aligned features, if any."""
        return self.profile if self.kind == "profile" else None

    def __post_init__(self) -> None:
        if self.residual_hidden < 1:
            raise ConfigError(f"residual_hidden must be positive, got {self.residual_hidden}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(
                f"hidden must be a non-empty list of positive widths, got {self.hidden}"
            )
        if self.embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be positive, got {self.embedding_dim}")
        if self.neighbours < 1:
            raise ConfigError(f"neighbours must be positive, got {self.neighbours}")
        if self.pool_rows is not None and (isinstance(self.pool_rows, bool) or self.pool_rows < 1):
            raise ConfigError(f"model.pool_rows must be >= 1 or null, got {self.pool_rows!r}")
