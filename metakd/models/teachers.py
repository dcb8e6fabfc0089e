"""Teacher networks: plain ``nn.Module`` stacks of linear layers with a score head.

All three are driven functionally during meta-learning (:mod:`metakd.meta.inner` passes per-task
:class:`~metakd.models.stack.StackParams`); ``forward`` uses the module's own weights, so a
teacher with adapted weights loaded is an ordinary standalone scorer. No BatchNorm: running
statistics would leak across tasks inside inner loops.

Scores follow PyOD's convention: higher means more anomalous.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar, cast

import torch
from torch import Tensor, nn

from metakd.errors import ConfigError
from metakd.models.profile import ProfileConfig
from metakd.models.stack import ACTIVATIONS, StackParams, stack_forward

TeacherKind = Literal["profile", "knn", "mlp", "svdd", "autoencoder", "gaussian", "vae", "ganomaly"]
Reference = tuple[Tensor, ...]


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

    kind: TeacherKind = "profile"
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


class Teacher(nn.Module):
    """A stack of linear layers followed by a score head.

    Subclasses define the layer sizes and :meth:`head`. ``score_is_logit`` says whether scores are
    logits (BCE applies directly) or non-negative distances. Heads that score relative to the
    task's support (``uses_reference``) get a *reference* computed from the support normals'
    outputs; after adaptation it is stored in the ``memory`` buffer so the module scores alone.
    """

    use_when: ClassVar[str] = ""
    """One line for users choosing ``model.kind``: what it scores and when to use it."""
    score_is_logit: bool = False
    uses_reference: bool = False
    uses_pool: bool = False
    input_skip: bool = False
    profile_width: int = 0
    """Trailing columns of each input row that hold its neighbourhood profile (0: none)."""
    memory: Tensor
    """Buffer: the stored reference's rows (see :meth:`store_reference`)."""

    def __init__(self, sizes: list[int], *, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.activation_name = activation
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.register_buffer("memory", torch.zeros(0, sizes[-1]))

    def linear_layers(self) -> list[nn.Linear]:
        """The stack's layers, in order (``self.layers`` holds only ``nn.Linear``)."""
        # nn.ModuleList is not generic: its items are typed as plain nn.Module.
        return [cast(nn.Linear, layer) for layer in self.layers]

    @property
    def input_dim(self) -> int:
        return self.linear_layers()[0].in_features

    def stack_params(self) -> StackParams:
        """The module's own weights as un-adapted :class:`StackParams` (differentiable)."""
        return StackParams.from_layers(
            [(layer.weight, layer.bias) for layer in self.linear_layers()]
        )

    def load_stack(self, params: StackParams) -> None:
        """Copy (materialised) per-task parameters into the module's weights, in place."""
        with torch.no_grad():
            for layer, (w, b) in zip(self.linear_layers(), params.materialize(), strict=True):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """``load_state_dict`` that accepts a stored reference of any size."""
        for name, value in state_dict.items():
            if name.startswith("memory"):
                setattr(self, name, torch.empty_like(value))
        self.load_state_dict(state_dict)

    def activation(self, x: Tensor) -> Tensor:
        return ACTIVATIONS[self.activation_name](x)

    def reference(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> Reference:
        """What :meth:`head` needs from the task: ``out [n, k]`` and ``x [n, d]`` are the support
        rows' outputs and inputs, ``normal_weight [n]`` is 1 for normals and 0 for anomalies;
        ``pool_out [m, k]``, ``pool_x [m, d]`` the unlabelled pool's (read only when
        :attr:`uses_pool`). Leave-one-out scoring (:meth:`head`) takes the reference rows in this
        order: support, then pool."""
        return ()

    def trust_parameters(self) -> list[nn.Parameter]:
        """The few parameters that weigh the teacher's evidences against each other, given
        their own outer step size (``meta.trust_lr``); none by default."""
        return []

    def reference_and_fit_scores(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> tuple[Reference, Tensor]:
        """:meth:`reference` (same arguments) and the support rows' own leave-one-out
        :meth:`fit_scores` ``[..., n]`` against it, what the inner loss reads. A teacher whose
        reference already holds what those scores need overrides this to compute it once."""
        reference = self.reference(out, x, normal_weight, pool_out, pool_x)
        return reference, self.fit_scores(out, x, reference, leave_one_out=True)

    def store_reference(self, reference: Reference) -> None:
        """Keep a task's reference in ``memory`` for standalone scoring."""

    def stored_reference(self) -> Reference:
        return ()

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        """Scores ``[..., N]`` from stack outputs ``out [..., N, k]`` and inputs ``x [..., N, d]``.

        ``leave_one_out``: ``out`` are the reference rows themselves; a row must not count as its
        own neighbour.
        """
        raise NotImplementedError

    def fit_scores(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        """Per-row values ``[..., N]`` the inner loop's losses are applied to (arguments as
        :meth:`head`): the anomaly scores themselves, unless a teacher trains on an energy other
        than its score (GANomaly: reconstruction + latent mismatch, scored by the latter; the
        VAE scoring reconstruction probability still fits the ELBO). Same scale convention as
        the scores: logits when :attr:`score_is_logit`, else non-negative."""
        return self.head(out, x, reference, leave_one_out=leave_one_out)

    def outer_term(self, support_x: Tensor, support_y: Tensor) -> Tensor | None:
        """A term of the meta-parameters alone, added to the meta-loss of a meta-batch (support
        rows ``[B, n, d]``, labels ``[B, n]``): the inner loop never sees it (GANomaly's
        adversarial training). ``None``: no such term."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly scores ``[N]`` for rows ``x [N, d]`` with the module's own weights."""
        out, _ = stack_forward(self.stack_params(), x, activation=self.activation)
        return self.head(out, x, self.stored_reference())


class MLPScorer(Teacher):
    """MLP mapping a row to an anomaly logit (OC-MAML style, Frikha et al. 2021)."""

    use_when = "an anomaly logit (OC-MAML); best with labelled anomalies in every support"
    score_is_logit = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__([input_dim, *config.hidden, 1], activation=config.activation)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        return out.squeeze(-1)


class _DistanceTeacher(Teacher):
    """Shared embedding of the distance heads: ``φ(x)``, or ``[γ·x/√D, φ(x)]`` with the input skip."""

    def __init__(self, input_dim: int, config: ModelConfig, *, bias: bool) -> None:
        super().__init__(
            [input_dim, *config.hidden, config.embedding_dim],
            activation=config.activation,
            bias=bias,
        )
        self.input_skip = config.input_skip
        # log γ: γ > 0 always, so the input part can fade but never flips sign.
        self.log_skip = nn.Parameter(torch.zeros(())) if config.input_skip else None
        width = config.embedding_dim + (input_dim if config.input_skip else 0)
        self.register_buffer("memory", torch.zeros(0, width))

    def embed(self, out: Tensor, x: Tensor) -> Tensor:
        """Embeddings ``[..., N, k (+ D)]`` from stack outputs and inputs."""
        if self.log_skip is None:
            return out
        scale = torch.exp(self.log_skip) / x.shape[-1] ** 0.5
        return torch.cat([scale * x, out], dim=-1)


class SVDDNet(_DistanceTeacher):
    """Embedding network scored by squared distance to a centre (Deep SVDD, Ruff et al. 2018).

    Bias-free, as Deep SVDD requires to rule out the trivial constant map. The centre is the mean
    embedding of the task's support normals.
    """

    use_when = (
        "domains that share their features (one sensor rig, one embedding model): "
        "a meta-learned centre distance"
    )

    uses_reference = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__(input_dim, config, bias=False)

    def reference(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> Reference:
        w = normal_weight.unsqueeze(-1)
        return ((self.embed(out, x) * w).sum(-2) / w.sum(-2).clamp_min(1.0),)

    def store_reference(self, reference: Reference) -> None:
        self.memory = reference[0].detach().reshape(1, -1).clone()

    def stored_reference(self) -> Reference:
        return (self.memory[0],)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        (centre,) = reference
        return (self.embed(out, x) - centre.unsqueeze(-2)).pow(2).sum(-1)


class KNNNet(_DistanceTeacher):
    """Embedding network scored by the mean distance to the k nearest reference rows.

    A meta-learned metric for kNN anomaly detection. The reference is the support normals and,
    with ``pool_neighbours``, the unlabelled pool rows, whose distances count ``c`` times (a
    meta-learned trust in the pool). With the input skip the detector starts as plain kNN on
    the scaled features and meta-training shapes the metric across tasks. Neighbours are selected
    with masks (anomalous support rows and, in leave-one-out mode, the row itself are excluded),
    so it runs under vmap.
    """

    use_when = "as svdd, scored by the nearest support normals (and pool rows) in a learned metric"
    uses_reference = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__(input_dim, config, bias=True)
        self.neighbours = config.neighbours
        self.uses_pool = config.pool_neighbours
        self.log_pool_factor = nn.Parameter(torch.zeros(())) if config.pool_neighbours else None
        # Stored reference for standalone scoring: embeddings (memory), each row's distance factor.
        self.register_buffer("memory_factor", torch.zeros(0))

    def reference(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> Reference:
        ref = self.embed(out, x)
        factor = torch.ones_like(normal_weight)
        if self.log_pool_factor is not None and pool_out is not None and pool_x is not None:
            ref = torch.cat([ref, self.embed(pool_out, pool_x)], dim=-2)
            pool_factor = torch.exp(self.log_pool_factor).expand(pool_out.shape[:-1])
            factor = torch.cat([factor, pool_factor], dim=-1)
            normal_weight = torch.cat([normal_weight, torch.ones_like(pool_factor)], dim=-1)
        return (ref, normal_weight, factor)

    def store_reference(self, reference: Reference) -> None:
        ref, weight, factor = reference
        keep = weight > 0
        self.memory = ref[keep].detach().clone()
        self.memory_factor = factor[keep].detach().clone()

    def stored_reference(self) -> Reference:
        return (self.memory, torch.ones_like(self.memory_factor), self.memory_factor)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        ref, weight, factor = reference
        e = self.embed(out, x)
        norms = e.pow(2).sum(-1, keepdim=True) + ref.pow(2).sum(-1).unsqueeze(-2)
        sq = norms - 2.0 * e @ ref.transpose(-1, -2)  # [..., N, n]
        valid = weight.unsqueeze(-2).expand_as(sq)
        if leave_one_out:
            # Row i is reference row i (support first, then pool): never its own neighbour.
            eye = torch.eye(sq.shape[-2], sq.shape[-1], dtype=sq.dtype, device=sq.device)
            valid = valid * (1.0 - eye)
        distance = _expansion_distance(sq, norms) * factor.unsqueeze(-2)
        if distance.numel() == 0:  # no rows to score (an empty pool)
            return distance.sum(-1)
        # Invalid neighbours sort last; only valid ones among the k nearest are averaged.
        big = distance.detach().max() + 1.0
        masked = distance + (1.0 - valid) * big
        k = min(self.neighbours, sq.shape[-1])
        nearest, index = masked.topk(k, dim=-1, largest=False)
        keep = valid.gather(-1, index)
        return (nearest * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)


def _expansion_distance(sq: Tensor, norms: Tensor) -> Tensor:
    """Distances from squared distances ``sq`` computed by the norm expansion
    ``‖a‖² + ‖b‖² − 2 a·b`` (``norms`` = ``‖a‖² + ‖b‖²``, same shape).

    In float32 the expansion is exact only to ~1e-7 × ``norms``, so a pair closer than
    ``1e-6 × norms`` is a duplicate: its distance is that floor, with no gradient. The square
    root's slope near 0 would otherwise multiply the expansion's rounding noise by up to 1e6: on
    a domain with repeated rows (ADBench mammography) an inner loop diverged to weights of 1e18
    whenever the thread count made two copies of a row embed a rounding error apart.
    """
    return _floored_sqrt(sq, (1e-6 * norms + 1e-12).detach())


def _floored_sqrt(sq: Tensor, floor: Tensor) -> Tensor:
    """``sqrt(max(sq, floor))``: the floor (no gradient) is :func:`_expansion_distance`'s."""
    return torch.maximum(sq, floor).sqrt()


def _pairwise_sq(e: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distances ``[..., N, M]`` of rows ``e [..., N, E]`` to ``ref [..., M, E]`` by the
    norm expansion, and the ``‖e‖² + ‖r‖²`` they were computed from (its resolution)."""
    norms = e.pow(2).sum(-1, keepdim=True) + ref.pow(2).sum(-1).unsqueeze(-2)
    return norms - 2.0 * e @ ref.transpose(-1, -2), norms


def _masked_knn(e: Tensor, ref: Tensor, valid: Tensor, k: int) -> Tensor:
    """Mean distance ``[..., N]`` of rows ``e [..., N, E]`` to their ``k`` nearest valid rows of
    ``ref [..., M, E]`` (``valid [..., M]`` 1/0). A row's first exact match in ``ref`` is itself
    and never its own neighbour, so reference rows score leave-one-out, during training and when
    scored again later. Masks only, so it runs under vmap."""
    sq, norms = _pairwise_sq(e, ref)
    return _knn_mean(sq, norms, valid, k)


def _knn_mean(sq: Tensor, norms: Tensor, valid: Tensor, k: int) -> Tensor:
    """:func:`_masked_knn` from the squared distances and norms of :func:`_pairwise_sq` (or a
    block of columns of them, ``valid`` then that block's).

    The neighbours are chosen without gradient; only the chosen ``N × k`` squared distances are
    taken from the differentiable ``N × M`` matrix, so the square root, its floor and everything
    after them (and their second-order terms) run on ``k`` columns, not ``M``, and the top-k
    itself is never differentiated.
    """
    if sq.shape[-1] == 0 or sq.shape[-2] == 0:  # no rows to score, or nothing to score against
        return sq.sum(-1)
    with torch.no_grad():
        sq_, norms_ = sq.detach(), norms.detach()
        # float32 rounding of the norm expansion is ~1e-7 relative; distinct rows are far above.
        match = sq_ <= 1e-5 * norms_
        first = match & (match.cumsum(-1) == 1)
        ok = valid.unsqueeze(-2) * (~first).to(sq.dtype)
        nearest = sq_.masked_fill(ok == 0, float("inf"))
        index = nearest.topk(min(k, sq.shape[-1]), dim=-1, largest=False).indices
        keep = ok.gather(-1, index)
        floor = 1e-6 * norms_.gather(-1, index) + 1e-12
    distance = _floored_sqrt(sq.gather(-1, index), floor)
    return (distance * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)


def _geometric_mean(d: Tensor, weight: Tensor) -> Tensor:
    """Weighted geometric mean over the last dimension of distances ``d`` (floored above 0)."""
    log_d = torch.log(d + 1e-12)
    return torch.exp((log_d * weight).sum(-1) / weight.sum(-1).clamp_min(1.0))


class ProfileNet(Teacher):
    """Scores a row from its neighbourhood profile plus a meta-learned metric (LUNAR-style).

    Rows arrive as ``[aligned features, profile]`` (:mod:`metakd.models.profile`). With channels
    ``c = [e_1 … e_E, s_φ, p_φ]`` (the mean of each profile evidence's log-normalised columns:
    ``s_B, s_A, p`` the distances to the support normals in two scalings and to the pool, then
    those ``profile.evidences`` adds; then the distances to the support normals and the pool in
    the learned embedding ``φ`` of the whole row, normalised by the reference rows' own
    leave-one-out geometric mean), the score is the logit

        score = (α + G t)ᵀ c + r(profile),

    ``t`` the profile's task statistics. ``α`` starts at the hedge ``(s_B + p) / 2`` with ``G``
    and the residual MLP ``r``'s output layer at zero, so before meta-training the teacher *is*
    the simple detector; meta-training learns ``φ`` (which the inner loop adapts per task), how
    far to trust each evidence per task, and ``r``.
    """

    use_when = (
        "any collection, any feature count: starts as kNN evidence and meta-learns what to add"
    )
    score_is_logit = True
    uses_reference = True
    uses_pool = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__(
            [input_dim, *config.hidden, config.embedding_dim], activation=config.activation
        )
        self.profile_width = config.profile.width
        if input_dim <= self.profile_width:
            raise ValueError(
                f"profile teacher: input_dim {input_dim} must exceed the profile's "
                f"{self.profile_width} columns"
            )
        self.neighbours = config.neighbours
        # Each evidence's columns in the profile; the task statistics follow them.
        self.evidence_columns: list[tuple[int, int]] = []
        start = 0
        for _, count in config.profile.columns():
            self.evidence_columns.append((start, start + count))
            start += count
        self.stats_start = start
        # Evidences, then the embedding's support and pool distances; the hedge
        # (support_b + pool) / 2 to start with, every other evidence untrusted.
        evidences = config.profile.evidences
        base = [0.5 if e in ("support_b", "pool") else 0.0 for e in evidences] + [0.0, 0.0]
        self.base = nn.Parameter(torch.tensor(base))
        self.gate = nn.Parameter(torch.zeros(len(base), config.profile.n_stats))
        residual_in = nn.Linear(self.profile_width, config.residual_hidden)
        residual_out = nn.Linear(config.residual_hidden, 1)
        nn.init.zeros_(residual_out.weight)
        nn.init.zeros_(residual_out.bias)
        self.residual = nn.Sequential(residual_in, nn.Tanh(), residual_out)
        self.register_buffer("memory_pool", torch.zeros(0, config.embedding_dim))
        self.register_buffer("memory_scale", torch.ones(2))

    def trust_parameters(self) -> list[nn.Parameter]:
        """``α`` and ``G``: the trust in each evidence, and how task statistics move it."""
        return [self.base, self.gate]

    def _scale(self, e: Tensor, weight: Tensor) -> Tensor:
        """Geometric mean of the rows' leave-one-out kNN distance among themselves (weighted)."""
        return _geometric_mean(_masked_knn(e, e, weight, self.neighbours), weight)

    def reference(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> Reference:
        if pool_out is None:
            # No pool: the support normals stand in for it, as in the profile.
            pool_out, pool_weight = out, normal_weight
        else:
            pool_weight = torch.ones_like(pool_out[..., 0])
        scales = torch.stack(
            [self._scale(out, normal_weight), self._scale(pool_out, pool_weight)], dim=-1
        )
        return (out, normal_weight, pool_out, pool_weight, scales)

    def store_reference(self, reference: Reference) -> None:
        out, weight, pool_out, pool_weight, scales = reference
        self.memory = out[weight > 0].detach().clone()
        self.memory_pool = pool_out[pool_weight > 0].detach().clone()
        self.memory_scale = scales.detach().clone()

    def stored_reference(self) -> Reference:
        ones = torch.ones_like(self.memory[..., 0])
        pool_ones = torch.ones_like(self.memory_pool[..., 0])
        return (self.memory, ones, self.memory_pool, pool_ones, self.memory_scale)

    def channels(self, out: Tensor, x: Tensor, reference: Reference) -> Tensor:
        """The five evidence channels ``[..., N, 5]`` (see the class docstring)."""
        ref, weight, pool_ref, pool_weight, scales = reference
        s_phi = _masked_knn(out, ref, weight, self.neighbours)
        p_phi = _masked_knn(out, pool_ref, pool_weight, self.neighbours)
        return self._channels(x, s_phi, p_phi, scales)

    def _channels(self, x: Tensor, s_phi: Tensor, p_phi: Tensor, scales: Tensor) -> Tensor:
        """:meth:`channels` from the rows' embedding distances to the support and the pool."""
        profile = x[..., -self.profile_width :]
        evidence = [profile[..., a:b].mean(-1) for a, b in self.evidence_columns]
        return torch.stack(
            [
                *evidence,
                torch.log(s_phi / scales[..., 0:1] + 0.01),
                torch.log(p_phi / scales[..., 1:2] + 0.01),
            ],
            dim=-1,
        )

    def _score(self, x: Tensor, channels: Tensor) -> Tensor:
        """``(α + G t)ᵀ c + r(profile)`` of rows ``x`` with evidence ``channels [..., N, 5]``."""
        profile = x[..., -self.profile_width :]
        stats = profile[..., self.stats_start :]
        trust = self.base + stats @ self.gate.T  # [..., N, 5]
        return (trust * channels).sum(-1) + self.residual(profile).squeeze(-1)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        # Leave-one-out needs no flag: a row's exact match in the reference is left out always.
        return self._score(x, self.channels(out, x, reference))

    def reference_and_fit_scores(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> tuple[Reference, Tensor]:
        """As :meth:`Teacher.reference_and_fit_scores`, from one distance matrix of the support
        and pool rows among themselves: the support's own distances serve both its scale and
        its ``s_φ`` channel, and the pool block both the pool's scale and the support's ``p_φ``.
        """
        if pool_out is None:
            return super().reference_and_fit_scores(out, x, normal_weight)
        n, k = out.shape[-2], self.neighbours
        pool_weight = torch.ones_like(pool_out[..., 0])
        sq, norms = _pairwise_sq(out, torch.cat([out, pool_out], dim=-2))
        pool_sq, pool_norms = _pairwise_sq(pool_out, pool_out)
        s_phi = _knn_mean(sq[..., :n], norms[..., :n], normal_weight, k)
        p_phi = _knn_mean(sq[..., n:], norms[..., n:], pool_weight, k)
        p_self = _knn_mean(pool_sq, pool_norms, pool_weight, k)
        scales = torch.stack(
            [_geometric_mean(s_phi, normal_weight), _geometric_mean(p_self, pool_weight)], dim=-1
        )
        reference = (out, normal_weight, pool_out, pool_weight, scales)
        return reference, self._score(x, self._channels(x, s_phi, p_phi, scales))


class AutoEncoder(Teacher):
    """Autoencoder scored by mean squared reconstruction error per row."""

    use_when = "reconstruction error; normal rows near a low-dimensional surface"

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        encoder = [input_dim, *config.hidden, config.embedding_dim]
        super().__init__(encoder + encoder[-2::-1], activation=config.activation)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        return (out - x).pow(2).mean(-1)


# Each kind's constructor takes (input_dim, config); Teacher's own takes the layer sizes. Kinds
# in modules of their own add themselves with register_kind (imported at the end of this file).
_KINDS: dict[str, Callable[[int, ModelConfig], Teacher]] = {
    "profile": ProfileNet,
    "svdd": SVDDNet,
    "knn": KNNNet,
    "autoencoder": AutoEncoder,
    "mlp": MLPScorer,
}

T = TypeVar("T", bound=type[Teacher])


def register_kind(kind: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`Teacher` subclass the one built for ``model.kind: kind``
    (its constructor takes ``(input_dim, config)``).

    Raises:
        ValueError: ``kind`` is taken.
    """

    def add(cls: T) -> T:
        if kind in _KINDS:
            raise ValueError(f"teacher kind {kind!r} is registered twice")
        _KINDS[kind] = cls
        return cls

    return add


def teacher_kinds() -> dict[str, str]:
    """Every ``model.kind``, default first, with its one line on when to use it."""
    # Every registered constructor is a Teacher subclass (register_kind's bound).
    return {kind: cast("type[Teacher]", cls).use_when for kind, cls in _KINDS.items()}


def build_teacher(input_dim: int, config: ModelConfig) -> Teacher:
    """Instantiate the teacher for ``input_dim`` features."""
    return _KINDS[config.kind](input_dim, config)


class LogitScorer(nn.Module):
    """A teacher whose scores are mapped to the logit-like scale (see :func:`score_logits`)."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: Tensor) -> Tensor:
        return score_logits(self.teacher, self.teacher(x))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def score_logits(teacher: Teacher, scores: Tensor) -> Tensor:
    """Map scores to an unbounded logit-like scale (identity for logits, log for distances)."""
    return scores if teacher.score_is_logit else torch.log(scores + 1e-6)


__all__ = [
    "AutoEncoder",
    "GANomalyConfig",
    "GaussianConfig",
    "KNNNet",
    "LogitScorer",
    "MLPScorer",
    "ModelConfig",
    "ProfileNet",
    "SVDDNet",
    "Teacher",
    "build_teacher",
    "teacher_kinds",
    "VAEConfig",
    "count_parameters",
    "register_kind",
    "score_logits",
]

# The kinds in modules of their own register themselves on import. Imported last: each subclasses
# Teacher from this module (importing one of them first works too: it imports this module, whose
# import of it here then finds it already under way).
from metakd.models import ganomaly, gaussian, vae  # noqa: E402, F401
