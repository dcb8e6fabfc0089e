"""The inner loop on one domain (or a batch of domains of one shape), from checked rows to an adapted teacher with its reference and scores."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metakd import configio
from metakd.data.transforms import Scaler, align_features
from metakd.detect.config import SCORE_BLOCK_ROWS, AdaptConfig
from metakd.detect.inputs import DomainRows
from metakd.distill import DistillConfig
from metakd.errors import InputError
from metakd.meta.inner import PoolTerm, adapt, reference_scores
from metakd.meta.learners import AdaptationPlan, InnerConfig
from metakd.meta.losses import LossFn, inner_loss_fn
from metakd.models.deploy import Preprocessor
from metakd.models.experts import PoolGaussianMix
from metakd.models.profile import NeighbourProfile
from metakd.models.stack import StackParams
from metakd.models.subsample import bounded_reference, seeded_order
from metakd.models.teachers import Teacher, score_logits
from metakd.models.teachers.profile import ProfileNet
from metakd.persist import (
    TeacherBundle,
)
from metakd.threshold import calibrate_threshold, resolve_method


@dataclass
class _Adapted:
    """The adapted teacher (its reference stored) and its logit-scale scores of the support and
    pool rows themselves, leave-one-out where a row is in the reference."""

    teacher: Teacher
    inner: InnerConfig
    support_scores: Tensor
    pool_scores: Tensor | None
    calibration_scores: Tensor | None = None
    """The support's cross-fitted scores (:func:`cross_fitted`), which the threshold then reads
    instead of ``support_scores`` (those stay the student's targets: the teacher's own)."""
    linear_mix: float = 0.0
    """The weight the ``linear`` evidence was mixed into the scores with (0: not mixed)."""
    anomaly_mix: float = 0.0
    """The weight the ``anomalies`` evidence was mixed into the scores with (0: not mixed)."""
    own_threshold: float | None = None
    """With ``calibration_scores``: the threshold ``support_scores`` give, where the student's
    hard labels split as they did before cross-fitting."""

    def hard_label_threshold(self, threshold: float) -> float:
        """Where distillation splits the student's hard labels, given the teacher's threshold."""
        return threshold if self.own_threshold is None else self.own_threshold

    @property
    def threshold_scores(self) -> Tensor:
        """The support scores the threshold is calibrated on."""
        return self.support_scores if self.calibration_scores is None else self.calibration_scores


@dataclass
class _Prepared:
    """One domain's checked inputs and fitted preprocessing, ready for the inner loop: the raw
    ``support``, ``labels`` and ``pool`` rows (on the fitting device), the checked ``domain``
    (where each row of ``X`` takes its training score from), and the preprocessed support ``xs``, pool ``xp`` and reference
    rows ``xr`` (the pool rows ``kept`` as the teacher's reference)."""

    bundle: TeacherBundle
    cfg: AdaptConfig
    preprocess: Preprocessor
    support: Tensor
    labels: Tensor
    pool: Tensor | None
    domain: DomainRows
    xs: Tensor
    xp: Tensor | None
    xr: Tensor | None
    kept: Tensor | None
    started: float

    def batch_key(self) -> tuple[Any, ...]:
        """Domains with equal keys adapt in one batched call (:func:`fit_many`)."""
        return (
            tuple(self.xs.shape),
            None if self.xr is None else tuple(self.xr.shape),
            bool((self.labels == 1).any()),  # which inner loss applies
            str(self.xs.device),
        )


@dataclass
class _InnerSetup:
    """The inner loop's settings for a teacher: its (adapt-overridden) inner config, a copy of
    the teacher on the fitting device, the loss, the starting parameters and the plan."""

    inner: InnerConfig
    teacher: Teacher
    loss: LossFn
    params: StackParams
    plan: AdaptationPlan
    pool: PoolTerm | None
    linear_mix: float = 0.0
    """``adapt.linear_mix``: with labelled anomalies, the weight of the ``linear`` evidence in
    the adapted teacher's score (:meth:`~metakd.models.teachers.profile.ProfileNet.mixed`)."""
    anomaly_mix: float = 0.0
    """``adapt.anomaly_mix``: the same for the ``anomalies`` evidence."""

    @staticmethod
    def of(bundle: TeacherBundle, cfg: AdaptConfig, labels: Tensor) -> _InnerSetup:
        inner = configio.from_dict(
            InnerConfig, configio.to_dict(bundle.inner) | cfg.inner, prefix="inner."
        )
        teacher = copy.deepcopy(bundle.teacher).to(labels.device)
        loss = inner_loss_fn(
            inner.loss,
            has_anomalies=bool((labels == 1).any()),
            score_is_logit=teacher.score_is_logit,
        )
        # Clones: the adapted parameters refer to these tensors, and each domain's teacher
        # copy is overwritten with its own adapted weights.
        params = StackParams.from_layers(
            [
                (
                    layer.weight.detach().clone(),
                    None if layer.bias is None else layer.bias.detach().clone(),
                )
                for layer in teacher.linear_layers()
            ]
        )
        # Meta-SGD's learned rates, unless the step size is overridden.
        plan = AdaptationPlan.of(teacher, inner, [] if "lr" in cfg.inner else bundle.rates)
        return _InnerSetup(
            inner,
            teacher,
            loss,
            params,
            plan,
            inner.pool_term(),
            linear_mix=cfg.linear_mix,
            anomaly_mix=cfg.anomaly_mix,
        )

    def run(self, xs: Tensor, labels: Tensor, xr: Tensor | None) -> StackParams:
        """The one inner loop on one domain's preprocessed support ``xs [n, D]`` (and reference
        pool rows ``xr [m, D]``); under ``torch.func.vmap`` on a batch of domains."""
        adapted, _ = adapt(
            self.params,
            xs,
            labels,
            teacher=self.teacher,
            loss=self.loss,
            steps=self.inner.steps,
            lr=self.plan.lr,
            first_order=True,  # no meta-gradient is needed here
            layers=self.plan.layers,
            pool_x=xr,
            pool=self.pool,
            optimizer=self.plan.optimizer,
            proximal=self.plan.proximal,
        )
        return adapted

    def run_batch(self, domains: list[_Prepared]) -> list[StackParams]:
        """:meth:`run` on domains of one :meth:`_Prepared.batch_key`, batched with
        ``torch.func.vmap`` as meta-training batches tasks (the weights unbatched)."""
        if len(domains) == 1:
            return [self.run(domains[0].xs, domains[0].labels, domains[0].xr)]
        xs = torch.stack([d.xs for d in domains])
        ys = torch.stack([d.labels for d in domains])
        xr = (
            None
            if domains[0].xr is None
            else torch.stack([d.xr for d in domains if d.xr is not None])
        )
        has_bias = [b is not None for b in self.params.biases]

        def run(xs: Tensor, ys: Tensor, xr: Tensor | None) -> tuple[Any, ...]:
            # vmap returns tensors only: a bias-free layer's None (svdd) is put back after.
            p = self.run(xs, ys, xr)
            return p.weights, tuple(b for b in p.biases if b is not None), p.factors

        weights, biases, factors = torch.func.vmap(run, in_dims=(0, 0, None if xr is None else 0))(
            xs, ys, xr
        )
        given = iter(biases)
        batched = StackParams(
            weights=weights,
            biases=tuple(next(given) if has else None for has in has_bias),
            factors=factors,
        )
        return [_unbatch(batched, i) for i in range(len(domains))]

    def complete(
        self,
        adapted: StackParams,
        xs: Tensor,
        labels: Tensor,
        xp: Tensor | None,
        xr: Tensor | None,
        kept: Tensor | None,
    ) -> _Adapted:
        """A teacher holding one domain's adapted parameters and reference, with its
        leave-one-out scores of the support and pool rows ``xp`` (``xr``: those in the
        reference, ``kept``)."""
        teacher = copy.deepcopy(self.teacher)
        with torch.no_grad():
            # The reference to store, and the support's and pool's own scores, leave-one-out:
            # what the threshold and the student's targets are fitted on (a row in the reference
            # is not its own neighbour).
            reference, support_raw, pool_raw = reference_scores(
                adapted, teacher=teacher, support_x=xs, support_y=labels, pool_x=xr
            )
            teacher.load_stack(adapted)
            teacher.store_reference(reference)
            teacher.eval()
            if xr is not xp and xp is not None and pool_raw is not None:
                # Rows outside the reference are new to it and scored as new rows; rows inside
                # it keep their leave-one-out scores from above.
                in_reference = pool_raw
                pool_raw = torch.cat([teacher(chunk) for chunk in xp.split(SCORE_BLOCK_ROWS)])
                pool_raw[kept] = in_reference
            normals, mixed = labels == 0, (0.0, 0.0)
            if isinstance(teacher, ProfileNet) and bool((labels == 1).any()):
                mixed = teacher.fit_mix(
                    xs[normals],
                    support_raw[normals],
                    linear=self.linear_mix,
                    anomalies=self.anomaly_mix,
                )
                if any(mixed):  # the scores every later step reads are the mixed ones
                    support_raw = teacher.mixed(xs, support_raw)
                    if pool_raw is not None and xp is not None:
                        pool_raw = teacher.mixed(xp, pool_raw)
            return _Adapted(
                teacher=teacher,
                inner=self.inner,
                support_scores=score_logits(teacher, support_raw),
                pool_scores=None if pool_raw is None else score_logits(teacher, pool_raw),
                linear_mix=mixed[0],
                anomaly_mix=mixed[1],
            )


def cross_fitted(prepared: _Prepared, setup: _InnerSetup, adapted: _Adapted) -> _Adapted:
    """``adapted`` with the support's cross-fitted scores, when the threshold is read from them
    alone (``normal_quantile``: no pool, no labelled anomalies), ``threshold.folds`` > 0 and at
    most ``threshold.fold_rows`` normals.

    A support row's own score runs low: the scaling, the profile and the inner loop were all
    fitted on it (the leave-one-out reference alone does not undo that), so a quantile of those
    scores flags far more unseen normals than it should (RESULTS.md §12). Split the normals
    into ``folds`` seeded folds (leave-one-out below that many rows); each fold is scored by the
    teacher fitted on the others, as a new row is: the scores a conformal quantile needs
    (cross-conformal, Vovk 2015). Only the thresholds move: the student is distilled on the full
    fit's scores and threshold as before (distilled toward these, it ranked worse; RESULTS.md
    §12), and its threshold is the teacher's in its units.
    """
    p, cfg = prepared, prepared.cfg
    method = resolve_method(
        cfg.threshold, has_anomalies=bool((p.labels == 1).any()), has_pool=p.pool is not None
    )
    n, limit = len(p.support), cfg.threshold.fold_rows
    if method != "normal_quantile" or cfg.threshold.folds == 0 or (limit is not None and n > limit):
        return adapted
    order = seeded_order(n, cfg.seed)
    scores = torch.empty_like(adapted.support_scores)
    for held in order.tensor_split(min(cfg.threshold.folds, n)):
        keep = torch.ones(n, dtype=torch.bool, device=p.support.device)
        keep[held] = False
        rows, labels = p.support[keep], p.labels[keep]
        preprocess = fit_preprocess(p.bundle, rows, labels, None, seed=cfg.seed)
        xs = preprocess(rows)
        fold = setup.complete(setup.run(xs, labels, None), xs, labels, None, None, None)
        with torch.no_grad():
            raw = fold.teacher(preprocess(p.support[held]))
        scores[held.to(scores.device)] = score_logits(fold.teacher, raw)
    own, _ = calibrate_threshold(
        adapted.support_scores.cpu().numpy(), p.labels.cpu().numpy(), None, cfg.threshold
    )
    return dataclasses.replace(adapted, calibration_scores=scores, own_threshold=own)


def _unbatch(params: StackParams, i: int) -> StackParams:
    """Domain ``i``'s parameters from a batched :class:`StackParams` (unbatched leaves, the
    shared weights, come back from ``vmap`` expanded: all are indexed alike)."""
    return StackParams(
        weights=tuple(w[i] for w in params.weights),
        biases=tuple(None if b is None else b[i] for b in params.biases),
        factors=tuple(tuple((h[i], g[i]) for h, g in layer) for layer in params.factors),
    )


def fit_preprocess(
    bundle: TeacherBundle, support: Tensor, labels: Tensor, pool: Tensor | None, *, seed: int
) -> Preprocessor:
    """Scaling (and the neighbourhood profile) fitted on the support and the pool, never on
    rows to be evaluated."""
    d = support.shape[1]
    expected = bundle.teacher.input_dim - bundle.teacher.profile_width
    kind = bundle.alignment.kind
    if kind == "none" and d != expected:
        raise InputError(f"the data has {d} features but the teacher takes {expected}")
    if kind == "pad" and d > expected:
        raise InputError(
            f"the data has {d} features, more than the teacher's padded width {expected}"
        )
    rows = support if pool is None else torch.cat([support, pool])
    scaler = Scaler.fit(rows, bundle.scaling)
    eye = torch.eye(d, device=support.device)
    projection = align_features(eye, bundle.alignment) if kind != "none" else None
    clip = bundle.scaling.clip if bundle.scaling.clip is not None else float("inf")
    profile = None
    profile_config = bundle.model.input_profile()
    if profile_config is not None:
        profile = NeighbourProfile.fit_task(
            support,
            labels == 0,
            pool,
            scale=scaler,
            config=profile_config,
            seed=seed,
            scale_rows=bundle.model.pool_rows,
        )
    return Preprocessor(
        scaler.center.reshape(d), scaler.scale.reshape(d), clip, projection, profile
    )


#: Smallest clip :func:`student_preprocess` gives (rows that all sit at the centre).
_MIN_STUDENT_CLIP = 1.0


def student_preprocess(
    preprocess: Preprocessor, rows: list[Tensor], config: DistillConfig
) -> Preprocessor:
    """The preprocessing a student scores with: the teacher's, clipped where it is not.

    A student is only fitted where it was distilled; beyond, it extrapolates, and a linear head
    (a ReLU network, linear far from the data) extrapolates along each direction with a slope of
    either sign. ``scaling.clip`` keeps every scaled value within ``±clip``, so a student never
    meets values beyond those it was distilled on. A teacher meta-trained with
    ``scaling.clip: null`` has no clip: its student scored a row with one value at ``-1e30``
    ``-7e27``, the most normal score of all, as the slope along that feature was negative.

    Such a student clips scaled values at the reach of its distillation data instead:
    ``(1 + 2 · distill.mixup_extrapolation) · m + 3 · distill.noise_std[1]``, ``m`` the
    largest absolute scaled value of the support and pool ``rows`` (mixup stretches a pair of
    rows that far, noise adds up to three of its widest standard deviations). A value beyond
    saturates at the edge of what the student learned, where the teacher's scores it was
    distilled on are high, as a clipped teacher's student does at ``±clip``. The rows the
    threshold was fitted on are within the clip, so their scores do not change; the teacher's
    own preprocessing (``teacher.pt``) keeps no clip.
    """
    if not math.isinf(preprocess.clip):
        return preprocess
    with torch.no_grad():
        center, scale = preprocess.center, preprocess.scale
        reach = max(float(((r.to(center) - center) / scale).abs().max()) for r in rows)
    stretch = 1.0 + 2.0 * config.mixup_extrapolation
    clip = max(stretch * reach + 3.0 * config.noise_std[1], _MIN_STUDENT_CLIP)
    return Preprocessor(
        center,
        scale,
        clip,
        preprocess.projection if preprocess.use_projection else None,
        preprocess.profile if preprocess.use_profile else None,
    )


def pool_mix(prepared: _Prepared, pool_scores: Tensor | None) -> PoolGaussianMix | None:
    """The pool experts' mix for a domain (``adapt.pool_share``, the Gaussian's alone, else
    the teacher's shares fitted for supports like this one's: with labelled anomalies or
    without), standardised over the pool by the teacher's ``pool_scores [m]``; ``None`` at
    shares 0, without a pool, or where :meth:`PoolGaussianMix.fit` finds none."""
    p, b = prepared, prepared.bundle
    labelled = bool((p.labels == 1).any())
    share, knn = p.cfg.pool_share, 0.0  # a share set in the config is the Gaussian's alone
    if share is None and labelled and b.pool_share_anomalies is not None:
        share = b.pool_share_anomalies
        knn = b.pool_knn if b.pool_knn_anomalies is None else b.pool_knn_anomalies
    elif share is None:
        share, knn = b.pool_share, b.pool_knn
    if (share == 0 and knn == 0) or p.pool is None or pool_scores is None:
        return None
    return PoolGaussianMix.fit(
        p.pool.cpu(),
        pool_scores.cpu(),
        share=share,
        knn_share=knn,
        seed=p.cfg.seed,
        sizes=b.model.profile,
    )


def mixed(
    mix: PoolGaussianMix | None, prepared: _Prepared, support: Any, pool: Any
) -> tuple[Any, Any]:
    """A domain's ``support`` and ``pool`` scores (NumPy, ``pool`` may be ``None``) through
    ``mix``; as they are without one."""
    if mix is None:
        return support, pool
    with torch.no_grad():
        support = mix(prepared.support.cpu(), torch.as_tensor(support)).numpy()
        if pool is not None and prepared.pool is not None:
            pool = mix(prepared.pool.cpu(), torch.as_tensor(pool)).numpy()
    return support, pool


def restandardised(
    mix: PoolGaussianMix | None, prepared: _Prepared, pool_scores: Any
) -> PoolGaussianMix | None:
    """``mix`` for another scorer (the student) from its NumPy ``pool_scores``."""
    if mix is None:
        return None
    return mix.for_scores(
        torch.as_tensor(pool_scores), seed=prepared.cfg.seed, sizes=prepared.bundle.model.profile
    )


def pool_reference(
    bundle: TeacherBundle, pool: Tensor | None, seed: int
) -> tuple[Tensor | None, Tensor | None]:
    """The pool rows the teacher's references read (all, or a bounded seeded subsample) and
    the indices ``kept`` of those its embedding reads (``None``: all)."""
    # A bounded, seeded subsample of a large pool is the teacher's reference (its profile's
    # density reference and its embedding's pool neighbours): adapting and scoring then cost
    # memory and time linear in the rows, not quadratic. Every pool row is still scored and
    # distilled on.
    reference_pool, kept = pool, None
    pool_rows = bundle.model.pool_rows
    if pool is not None and bundle.teacher.uses_reference and pool_rows is not None:
        # The pool in a seeded random order: the profile's reference is its first max_pool
        # rows, and the teacher's embedding reads its first pool_rows, as in meta-training.
        order = seeded_order(len(pool), seed)
        reference_pool = pool[order[: bundle.model.profile.max_pool]]
        kept = order[:pool_rows]
    elif pool is not None and bundle.teacher.uses_reference:
        kept = bounded_reference(len(pool), bundle.model.profile.max_pool, seed)
        if len(kept) < len(pool):
            reference_pool = pool[kept]
    return reference_pool, kept
