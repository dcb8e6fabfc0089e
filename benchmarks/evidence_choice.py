"""Which evidence wins, per domain, and can a task tell without labels? (RESULTS.md §11, #25)

No meta-training: the profile's own evidences at the defaults (``ProfileConfig``), read straight
from :class:`~metakd.models.profile.NeighbourProfile` as ``metakd adapt`` fits it. Per domain and
seed the support is ``K`` normals (the first ``K`` with ``--ordered``), the pool every other row
(at most ``--max-rows``), given unlabelled and scored. Per domain, mean AUROC over seeds of:

* ``s_B`` (kNN to the support normals) and ``p`` (kNN density in the pool), each alone, their
  hedge ``s_B + p`` (the profile teacher's initialisation) and the better of the two (an oracle
  that knows the labels: what a perfect per-task choice would reach);
* ``pu``: the hedge re-weighted by a label-free estimate of each evidence's quality, the
  positive-unlabelled AUROC of the pool's scores against the support normals' own
  (leave-one-out) scores, ``w_B = clip(0.5 + (PU_B − PU_p), 0, 1)``;
* ``trim``: kNN density in a pool reference without the rows beyond every support normal under
  ``s_B`` (those may be anomalies packed densely, which a pool density calls normal), features
  standardised on support and pool, ``k`` neighbours, leave-one-out; ``s_B + trim`` beside it.

Also ``far``, the share of pool rows beyond every support normal, and its correlation over the
domains with the AUROC difference ``p − s_B``: a statistic that would let a trust pick.

Usage (from the repository root)::

    python benchmarks/evidence_choice.py ../shared/data/adbench-mvtec-vit [--seeds 2]
    python benchmarks/evidence_choice.py tasks/skab.yaml --ordered
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from metakd.config import TrainConfig
from metakd.data.collection import load_collection
from metakd.data.transforms import Scaler
from metakd.models.profile import NeighbourProfile

COLUMNS = ("s_B", "p", "hedge", "oracle", "pu", "trim", "s_B+trim", "far")


def _channels(profile: NeighbourProfile, rows: torch.Tensor, scaler: Scaler, spans) -> np.ndarray:
    """``[N, E]``: each evidence's mean log-normalised column (the profile teacher's channels)."""
    with torch.no_grad():
        columns = profile(rows, scaler(rows))
    return torch.stack([columns[:, a:b].mean(-1) for a, b in spans], -1).numpy()


def _trimmed_density(pool: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """Mean log kNN distance of every pool row to the kept rows (leave-one-out), over ``σ`` the
    kept rows' own median kNN distance, as the profile reads a density."""
    z = torch.as_tensor(pool, dtype=torch.float64)
    d = torch.cdist(z, z[torch.as_tensor(keep)])
    d[torch.as_tensor(keep), torch.arange(len(keep))] = float("inf")  # a row is not its neighbour
    near = d.topk(min(k, len(keep) - 1), largest=False).values
    sigma = near[torch.as_tensor(keep)].mean(-1).median()
    return torch.log(near / sigma + 0.01).mean(-1).numpy()


def domain_row(
    x: np.ndarray, y: np.ndarray, *, shots: int, seeds: int, max_rows: int, ordered: bool
) -> dict[str, float] | None:
    """Mean over seeds of every column of :data:`COLUMNS` on one domain (``None``: too few
    rows of a kind)."""
    config = TrainConfig()
    profile_config = config.model.input_profile()
    assert profile_config is not None  # the default teacher reads a profile
    names, spans = list(profile_config.evidences), profile_config.spans()
    b, p = names.index("support_b"), names.index("pool")
    normals = np.flatnonzero(y == 0)
    if len(normals) < shots + 10 or (y == 1).sum() < 2:
        return None
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        support = normals[:shots] if ordered else rng.choice(normals, shots, replace=False)
        rest = np.setdiff1d(np.arange(len(y)), support)
        if len(rest) > max_rows:
            rest = np.sort(rng.choice(rest, max_rows, replace=False))
        s = torch.as_tensor(x[support], dtype=torch.float32)
        q = torch.as_tensor(x[rest], dtype=torch.float32)
        scaler = Scaler.fit(torch.cat([s, q]), config.scaling)
        profile = NeighbourProfile.fit_task(
            s,
            torch.ones(len(s), dtype=torch.bool),
            q,
            scale=scaler,
            config=profile_config,
            seed=seed,
            scale_rows=config.model.pool_rows,
        )
        cs, cq = _channels(profile, s, scaler, spans), _channels(profile, q, scaler, spans)
        yq = y[rest]
        if len(np.unique(yq)) < 2:
            continue
        unlabelled = np.r_[np.zeros(len(s)), np.ones(len(q))]
        pu = [roc_auc_score(unlabelled, np.r_[cs[:, e], cq[:, e]]) for e in (b, p)]
        w = float(np.clip(0.5 + pu[0] - pu[1], 0.0, 1.0))
        far = cq[:, b] > cs[:, b].max()
        keep = np.flatnonzero(~far)
        if len(keep) <= 2 * profile_config.neighbours:
            keep = np.argsort(cq[:, b])[: 2 * profile_config.neighbours]
        both = np.r_[x[support], x[rest]].astype(np.float64)
        mu, sd = both.mean(0), both.std(0) + 1e-9
        trim = _trimmed_density((x[rest] - mu) / sd, keep, profile_config.neighbours)
        auc = {
            "s_B": roc_auc_score(yq, cq[:, b]),
            "p": roc_auc_score(yq, cq[:, p]),
            "hedge": roc_auc_score(yq, cq[:, b] + cq[:, p]),
            "pu": roc_auc_score(yq, w * cq[:, b] + (1.0 - w) * cq[:, p]),
            "trim": roc_auc_score(yq, trim),
            "s_B+trim": roc_auc_score(yq, cq[:, b] + trim),
            "far": float(far.mean()),
        }
        auc["oracle"] = max(auc["s_B"], auc["p"])
        runs.append(auc)
    if not runs:
        return None
    return {c: float(np.mean([r[c] for r in runs])) for c in COLUMNS}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("collection")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--max-rows", type=int, default=3000)
    ap.add_argument("--ordered", action="store_true", help="support = the first K normal rows")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    tasks = sorted(load_collection(a.collection).tasks, key=lambda t: t.name)
    print("| domain | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    rows = []
    for task in tasks:
        row = domain_row(
            task.X,
            task.y,
            shots=a.shots,
            seeds=a.seeds,
            max_rows=a.max_rows,
            ordered=a.ordered,
        )
        if row is None:
            continue
        rows.append(row)
        print(f"| {task.name} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |", flush=True)
    mean = {c: np.mean([r[c] for r in rows]) for c in COLUMNS}
    print(f"| **mean of {len(rows)}** | " + " | ".join(f"{mean[c]:.3f}" for c in COLUMNS) + " |")
    gain = [r["p"] - r["s_B"] for r in rows]
    corr = np.corrcoef([r["far"] for r in rows], gain)[0, 1]
    print(f"\ncorrelation over domains of `far` with AUROC(p) − AUROC(s_B): {corr:+.2f}")


if __name__ == "__main__":
    main()
