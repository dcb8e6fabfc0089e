"""The share of the pool's Gaussian in adapted scores, fitted on the meta-train and meta-val
domains.

Meta-training learns how far to trust each profile evidence from episodes; whether the pool's
own Gaussian ranks a collection's anomalies better than the adapted teacher is a property of
the collection (image embeddings: yes, by 0.04 AUROC; tables and sensor series: no; RESULTS.md
§11), and one number. After meta-training, :func:`fit_pool_share` adapts the teacher as
``metakd adapt`` does (:class:`~metakd.detect.FewShotDetector`) on episodes of a group of
domains at adapt-time sizes (``shots`` normals, the rest of the domain as the unlabelled pool,
bounded as adapt bounds it) and measures, for each share ``λ`` of
:class:`~metakd.models.experts.PoolGaussianMix`, how well the mixed scores rank the pool's
labelled anomalies on average: a closed-form fit of one trust, on the user's own domains, never
on a domain it is evaluated on.

Two groups are fitted and their curves averaged (:func:`combine`). The meta-val domains are
never trained on, so the trained teacher is adapted on them, but they are few (2-3 in a user's
folder, and the share fitted there alone follows them: classical's fold 1 chose 0.7 where its
held-out domains want 0). The meta-train domains are many, but the trained teacher ranks its
own domains almost perfectly (0.999 on an MVTec fold), so fitted with it the share was 0
whatever held on new domains; they are adapted from the initialisation the run started from,
which has never seen them: the Gaussian's case against a teacher on a domain that teacher did
not learn. RESULTS.md §11 has the fits measured.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metakd.config import TrainConfig
from metakd.data.task import Task
from metakd.detect.config import AdaptConfig
from metakd.detect.estimator import FewShotDetector
from metakd.detect.many import fit_many
from metakd.errors import MetakdError
from metakd.models.experts import PoolGaussianMix
from metakd.persist import TeacherBundle, TeacherWeights
from metakd.tracking import progress_bar

ShareGroups = Mapping[str, tuple[Sequence[Task], TeacherWeights | None]]
"""Groups of domains by name, each with the weights it is adapted from: the initialisation the
run started from (a teacher's weights and Meta-SGD rates), or ``None``: the saved teacher's."""

#: The shares tried, 0 (the teacher alone) to 1 (the Gaussian alone).
SHARES = tuple(i / 10 for i in range(11))
#: The kNN expert's shares of the scorer's part tried: none, or as much as the scorer (the
#: equal weight of two standardised experts, as ``adapt.linear_mix`` 1 is). The finer grid
#: fitted on a user's few domains overshot (RESULTS.md §11).
KNN_SHARES = (0.0, 0.5)
#: Pool rows of a fitting episode (a seeded subsample of larger domains), as adapt bounds them.
POOL_ROWS = 1024


@dataclass(frozen=True)
class PoolShareFit:
    """What :func:`fit_pool_share` found."""

    share: float
    """The share with the highest mean AUROC (the smaller one on a tie)."""
    episodes: int
    """Episodes it was fitted on (0: no domain had enough normals and anomalies; share 0)."""
    auroc: dict[float, float]
    """Mean AUROC of the pool's labelled rows at each share tried, without the kNN expert."""
    knn_share: float = 0.0
    """The kNN expert's share of the scorer's part, fitted with ``share`` (:data:`KNN_SHARES`;
    the smaller on a tie)."""
    auroc_knn: dict[float, float] = field(default_factory=dict)
    """The same as ``auroc`` with the kNN expert at its share (``KNN_SHARES[1]``)."""


def fit_pool_share(
    bundle: TeacherBundle,
    tasks: Sequence[Task],
    *,
    episodes: int,
    shots: int,
    seed: int,
    anomaly_shots: int = 0,
) -> PoolShareFit:
    """Fit ``λ`` on up to ``episodes`` episodes, drawn over ``tasks`` in turn (seeded).

    A task serves when its labelled rows hold more than ``shots`` normals and an anomaly
    outside the support (besides the ``anomaly_shots`` labelled anomalies the support holds);
    unlabelled rows join no episode. A teacher of windowed series is not fitted (share 0): its
    tasks hold windows where ``metakd adapt`` reads raw series.
    """
    if bundle.window is not None:  # its tasks hold windows, adapt reads raw series
        return PoolShareFit(share=0.0, episodes=0, auroc={})
    usable = [
        t
        for t in tasks
        if int((t.y == 0).sum()) > shots + 1 and int((t.y == 1).sum()) > anomaly_shots
    ]
    drawn = [
        _episode(usable[i % len(usable)], shots=shots, anomaly_shots=anomaly_shots, seed=[seed, i])
        for i in range(episodes if usable else 0)
    ]
    labelled = shots + anomaly_shots  # the support: normals first, then anomalies
    detectors = [
        FewShotDetector(bundle, config=AdaptConfig(student=False, pool_share=0.0, seed=seed + i))
        for i in range(len(drawn))
    ]
    # Rows labelled -1 are the pool: each fit's own scores cover its support and pool. Episodes
    # of one shape adapt in one batched inner loop, as `metakd adapt --support-dir` does.
    with warnings.catch_warnings():
        # The fit reads scores, not thresholds: a fitting episode's threshold is thrown away.
        warnings.filterwarnings("ignore", message="the calibrated threshold", category=UserWarning)
        fitted = fit_many(detectors, [(rows, labels, None) for rows, labels, _ in drawn])
    totals = np.zeros((len(KNN_SHARES), len(SHARES)))
    done = 0
    for i, ((rows, _, pool_y), detector) in enumerate(zip(drawn, fitted, strict=True)):
        if isinstance(detector, MetakdError):
            raise detector
        scores = torch.as_tensor(detector.decision_scores_, dtype=torch.float64)
        pool = torch.as_tensor(rows[labelled:])
        mix = PoolGaussianMix.fit(
            pool,
            scores[labelled:],
            share=1.0,
            knn_share=KNN_SHARES[-1],
            seed=seed + i,
            sizes=bundle.model.profile,
        )
        if mix is None:
            continue
        own, knn, gaussian = mix.standardised(pool, scores[labelled:])
        for row, k in enumerate(KNN_SHARES):
            part = ((1 - k) * own + k * knn).numpy()
            totals[row] += [_auroc((1 - s) * part + s * gaussian.numpy(), pool_y) for s in SHARES]
        done += 1
    if done == 0:
        return PoolShareFit(share=0.0, episodes=0, auroc={})
    return _pick(totals / done, episodes=done)


def combine(fits: Mapping[str, PoolShareFit]) -> PoolShareFit:
    """One share from fits on groups of domains: the first maximum of the mean of the groups'
    mean-AUROC curves, each group that had episodes weighing the same (share 0 where none
    had any)."""
    curves = [_curves(fit) for fit in fits.values() if fit.episodes]
    if not curves:
        return PoolShareFit(share=0.0, episodes=0, auroc={})
    return _pick(np.mean(curves, axis=0), episodes=sum(fit.episodes for fit in fits.values()))


def _curves(fit: PoolShareFit) -> np.ndarray:
    """``[len(KNN_SHARES), len(SHARES)]`` mean AUROCs of a fit (a fit stored before the kNN
    expert, without its curve, never picks it)."""
    knn = fit.auroc_knn or dict.fromkeys(SHARES, -np.inf)
    return np.array([[fit.auroc[s] for s in SHARES], [knn[s] for s in SHARES]])


def _pick(means: np.ndarray, *, episodes: int) -> PoolShareFit:
    """The shares at the first maximum of ``means`` (mean AUROC ``[len(KNN_SHARES),
    len(SHARES)]``): the smaller kNN share, then the smaller share, on a tie."""
    row, column = np.unravel_index(int(np.argmax(means)), means.shape)
    return PoolShareFit(
        share=SHARES[column],
        episodes=episodes,
        auroc={s: float(m) for s, m in zip(SHARES, means[0], strict=True)},
        knn_share=KNN_SHARES[row],
        auroc_knn=(
            {s: float(m) for s, m in zip(SHARES, means[1], strict=True)}
            if np.isfinite(means[1]).all()
            else {}
        ),
    )


def _episode(
    task: Task, *, shots: int, anomaly_shots: int, seed: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, labels, pool anomalies)``: ``shots`` random normals of ``task`` (label 0) and
    ``anomaly_shots`` random anomalies (label 1), then the rest of its labelled rows as the
    pool (label -1; at most :data:`POOL_ROWS`)."""
    rng = np.random.default_rng(seed)
    support = rng.choice(np.flatnonzero(task.y == 0), shots, replace=False)
    if anomaly_shots:
        anomalies = rng.choice(np.flatnonzero(task.y == 1), anomaly_shots, replace=False)
        support = np.r_[support, anomalies]
    rest = np.setdiff1d(np.flatnonzero(task.y >= 0), support)
    if len(rest) > POOL_ROWS:
        rest = np.sort(rng.choice(rest, POOL_ROWS, replace=False))
    labels = np.r_[np.zeros(shots), np.ones(anomaly_shots), -np.ones(len(rest))]
    return task.X[np.r_[support, rest]], labels, task.y[rest] == 1


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC as the Mann–Whitney statistic of midranks (ties count one half)."""
    from scipy.stats import rankdata  # only meta-train's last step needs scipy.stats

    ranks = rankdata(scores)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def pool_share_fitter(
    config: TrainConfig, *, progress: bool
) -> Callable[[Path, ShareGroups], dict[str, Any]] | None:
    """What meta-training with ``config`` calls on its best teacher
    (:data:`metakd.train.files.PoolShareFitter`): :func:`fit_pool_share` on
    ``pool_share_episodes`` episodes of ``shots`` normals per group of domains, each adapted
    from its own weights (the initialisation, or the saved teacher's), the groups
    :func:`combine`-d, with a progress bar; then the same with the most labelled anomalies a
    meta-training episode holds (``episode.anomaly_shots_max``) in each support, for adapting
    with labelled anomalies (``"with_anomalies"``; ``None`` where episodes hold none). ``None``
    with ``pool_share_episodes: 0`` (no share stored)."""
    if not config.pool_share_episodes:
        return None
    episodes, shots = config.pool_share_episodes, config.episode.shots
    anomaly_shots = max(config.episode.anomaly_shots, config.episode.anomaly_shots_max or 0)

    def fit(path: Path, groups: ShareGroups) -> dict[str, Any]:
        teacher = TeacherBundle.load(path)
        fits: dict[int, dict[str, PoolShareFit]] = {0: {}, anomaly_shots: {}}
        with progress_bar(enabled=progress) as bar:
            job = bar.add_task(
                "fit pool share", total=len(groups) * len(fits), info=f"{episodes} episodes"
            )
            for name, (tasks, weights) in groups.items():
                bundle = teacher if weights is None else teacher.with_weights(weights)
                for a, fitted in fits.items():
                    # The same seed per group: episodes depend on the tasks alone.
                    fitted[name] = fit_pool_share(
                        bundle,
                        tasks,
                        episodes=episodes,
                        shots=shots,
                        seed=config.seed,
                        anomaly_shots=a,
                    )
                    bar.advance(job)
            found = {a: combine(fitted) for a, fitted in fits.items()}
            bar.update(job, info=f"share {found[0].share:g}")

        starts = {n: "teacher" if w is None else "initialisation" for n, (_, w) in groups.items()}

        def record(a: int) -> dict[str, Any]:
            """The fit at ``a`` anomaly shots as plain data, each group's own fit beside it."""
            return _record(found[a]) | {
                "groups": {n: _record(f) | {"adapted_from": starts[n]} for n, f in fits[a].items()}
            }

        with_anomalies = (
            record(anomaly_shots) | {"anomaly_shots": anomaly_shots} if anomaly_shots else None
        )
        return record(0) | {"with_anomalies": with_anomalies}

    return fit


def _record(fit: PoolShareFit) -> dict[str, Any]:
    """``fit`` as plain data (what ``teacher.pt`` stores)."""
    curve = {f"{share:g}": value for share, value in fit.auroc.items()}
    knn = {f"{share:g}": value for share, value in fit.auroc_knn.items()}
    return {
        "share": fit.share,
        "knn_share": fit.knn_share,
        "episodes": fit.episodes,
        "auroc": curve,
        "auroc_knn": knn,
    }


__all__ = [
    "KNN_SHARES",
    "SHARES",
    "PoolShareFit",
    "ShareGroups",
    "combine",
    "fit_pool_share",
    "pool_share_fitter",
]
