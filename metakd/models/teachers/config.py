"""``model:``: the teacher's architecture, and the registry of the kinds' own sections.

A kind with settings of its own declares them as a dataclass in its module and passes it to
``@register_kind(name, settings=...)``: the dataclass is then the section ``model.<name>``
(:data:`KIND_SETTINGS`), checked in YAML and ``--set`` like any other, and the kind reads it
with :meth:`ModelConfig.section`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from metakd.configio import SECTIONS, SectionRegistry
from metakd.errors import ConfigError
from metakd.models.profile import ProfileConfig

#: The sections of ``model:`` that kinds register with their settings (``model.vae``, ...).
KIND_SETTINGS = SectionRegistry("model")

S = TypeVar("S")


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
    sections: dict[str, Any] = field(default_factory=dict, metadata={SECTIONS: KIND_SETTINGS})
    """Each kind's own settings by kind name (``gaussian``, ``vae``, ``ganomaly``, ...; those
    not given at their defaults). In YAML and ``--set`` every one is a key of ``model:`` itself
    (``model.vae.beta``), not of this field; a kind reads its own with :meth:`section`."""

    def input_profile(self) -> ProfileConfig | None:
        """The neighbourhood profile this kind reads after the aligned features, if any."""
        return self.profile if self.kind == "profile" else None

    def section(self, settings: type[S]) -> S:
        """The settings of type ``settings`` (a kind's section, registered with it)."""
        return KIND_SETTINGS.pick(self.sections, settings)

    def __post_init__(self) -> None:
        self.sections = KIND_SETTINGS.complete(self.sections)
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
