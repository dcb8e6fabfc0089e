"""``model.kind: profile`` (the default): a neighbourhood profile's evidences, weighed per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metakd.models.teachers.base import Reference, Teacher, register_kind
from metakd.models.teachers.config import ModelConfig
from metakd.models.teachers.distance import _geometric_mean, _knn_mean, _masked_knn, _pairwise_sq

#: :meth:`ProfileNet.mixed`'s terms that leave a score unchanged: ``(m_s, σ_s, m_l, w_l / σ_l)``
#: and the ``anomalies`` evidence's ``(m_a, w_a / σ_a)``.
_NO_MIX = [0.0, 1.0, 0.0, 0.0]
_NO_ANOMALY_MIX = [0.0, 0.0]


def _normal_terms(
    normals: Tensor, column: int | None, weight: float
) -> tuple[Tensor, Tensor] | None:
    """``(m, w / σ)`` of :meth:`ProfileNet.mixed` for one evidence column of the normals'
    rows ``normals [n, d]``: its median and ``weight`` over its spread; ``None`` where the
    profile lacks it (``column`` None), ``weight`` is 0 or the spread is 0."""
    if column is None or weight == 0:
        return None
    evidence = normals[..., column]
    spread = evidence.std(correction=0)
    return (evidence.quantile(0.5), weight / spread) if bool(spread > 1e-6) else None


@register_kind("profile")
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
    linear_mix: Tensor
    anomaly_mix: Tensor
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
        self.evidence_columns = config.profile.spans()
        self.stats_start = config.profile.width - config.profile.n_stats
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
        # :meth:`mixed`'s terms; these values leave a score as it is.
        self.register_buffer("linear_mix", torch.tensor(_NO_MIX))
        self.register_buffer("anomaly_mix", torch.tensor(_NO_ANOMALY_MIX))
        # The supervised evidences' columns counted from the row's end (None: not in the profile).
        self.linear_column = self._column(evidences, "linear")
        self.anomaly_column = self._column(evidences, "anomalies")

    def _column(self, evidences: list[str], evidence: str) -> int | None:
        """A one-column evidence's column counted from the row's end (None: not profiled)."""
        if evidence not in evidences:
            return None
        return self.evidence_columns[evidences.index(evidence)][0] - self.profile_width

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        # Teachers and detectors saved before either mix existed score without it.
        unmixed = {
            "linear_mix": torch.tensor(_NO_MIX),
            "anomaly_mix": torch.tensor(_NO_ANOMALY_MIX),
        }
        super().load_weights(unmixed | state_dict)

    def forward(self, x: Tensor) -> Tensor:
        return self.mixed(x, super().forward(x))

    def mixed(self, x: Tensor, scores: Tensor) -> Tensor:
        """``scores [N]`` of rows ``x [N, d]`` combined with their supervised evidences, the
        ``linear`` one ``l`` (the labelled rows' ridge discriminant) and the ``anomalies`` one
        ``a`` (``log(d_normal / d_anomaly)``), as :meth:`fit_mix` set it,

            (score − m_s) / σ_s + w_l · (l − m_l) / σ_l + w_a · (a − m_a) / σ_a,

        or as they are, before that or without the evidences. Only a fitted teacher's scores
        mix: meta-training and the inner loop score through :meth:`head`."""
        if self.linear_column is None and self.anomaly_column is None:
            return scores
        centre, spread, linear_centre, linear_weight = self.linear_mix.unbind()
        # The defaults give exactly `scores`: (x − 0) / 1 + 0 · finite.
        out = (scores - centre) / spread
        if self.linear_column is not None:
            out = out + linear_weight * (x[..., self.linear_column] - linear_centre)
        if self.anomaly_column is not None:
            anomaly_centre, anomaly_weight = self.anomaly_mix.unbind()
            out = out + anomaly_weight * (x[..., self.anomaly_column] - anomaly_centre)
        return out

    def fit_mix(
        self, normals: Tensor, scores: Tensor, *, linear: float, anomalies: float
    ) -> tuple[float, float]:
        """Set :meth:`mixed`'s terms from labelled normals ``normals [n, d]`` and the
        teacher's leave-one-out ``scores [n]`` of them: each expert standardised by the
        normals' median and spread, so they weigh alike whatever their units (an unsupervised
        expert and two supervised ones), the ``linear`` evidence weighed ``linear`` and the
        ``anomalies`` evidence ``anomalies``. An evidence the profile lacks, weighed 0 or
        without spread over the normals is left out. Returns the weights of the evidences
        mixed (0 for one left out); ``(0, 0)``, and nothing set, where none is or the scores
        have no spread (no scale to standardise by)."""
        spread = scores.std(correction=0) if len(scores) > 1 else scores.new_zeros(())
        if not bool(spread > 1e-6):
            return 0.0, 0.0
        linear_terms = _normal_terms(normals, self.linear_column, linear)
        anomaly_terms = _normal_terms(normals, self.anomaly_column, anomalies)
        if linear_terms is None and anomaly_terms is None:
            return 0.0, 0.0
        unmixed = (scores.new_zeros(()), scores.new_zeros(()))
        own = (scores.quantile(0.5), spread)
        self.linear_mix = torch.stack([*own, *(linear_terms or unmixed)]).to(self.linear_mix)
        self.anomaly_mix = torch.stack([*(anomaly_terms or unmixed)]).to(self.anomaly_mix)
        return (
            0.0 if linear_terms is None else linear,
            0.0 if anomaly_terms is None else anomalies,
        )

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
