"""What several test folders share, in one place: small builders (a seeded meta-batch, an untrained
teacher and its bundle, rows, CSV files, ``--set`` arguments) and the independent oracles of the
meta-gradient (`higher`'s differentiable SGD, and the same pure ``adapt`` one task at a time).

Import as ``from helpers import ...`` (``pythonpath = ["tests"]`` in pyproject); the fixtures
stay in ``tests/conftest.py``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.meta.inner import PoolTerm, adapt, task_scores
from metakd.meta.learners import InnerConfig, MetaLearner
from metakd.models.teachers import ModelConfig, Teacher, build_teacher, score_logits
from metakd.persist import TeacherBundle

REPO = Path(__file__).resolve().parents[1]
"""The repository root (``configs/``, ``tasks/``, the README)."""

TINY_TRAIN = [
    "tracking.mode=disabled",
    "iterations=20",
    "val_every=10",
    "model.hidden=[32]",
    "model.embedding_dim=8",
    "episode.meta_batch=4",
]
"""Overrides of the session's tiny teacher (``tiny_teacher`` in conftest), meta-trained on the
synthetic collection: 20 iterations of the default ``profile`` teacher, one hidden layer of 32."""

Batch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class TrainedRun:
    """A finished ``metakd meta-train`` run folder and what the command printed."""

    run: Path
    output: str

    @property
    def teacher(self) -> Path:
        return self.run / "teacher.pt"


# -- builders -------------------------------------------------------------------------------------


def sets(overrides: Sequence[str]) -> list[str]:
    """``["a=1", "b=2"]`` as command-line arguments: ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for item in overrides for arg in ("--set", item)]


def teacher_checkpoint(run: Path) -> dict[str, Any]:
    """The checkpoint dictionary of a run folder's ``teacher.pt``, loaded weights-only."""
    return torch.load(run / "teacher.pt", weights_only=True)


def file_hashes(root: Path, *, skip: Sequence[str] = ()) -> dict[str, str]:
    """The sha256 of every file under ``root`` by its path relative to ``root``, leaving out the
    files inside folders named in ``skip``: what a test compares to see that no file changed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not set(skip) & set(p.relative_to(root).parts)
    }


def normal_rows(n: int, seed: int, d: int = 4, shift: float = 0.0) -> np.ndarray:
    """``n`` seeded standard-normal float32 rows of ``d`` features, shifted by ``shift``."""
    return (np.random.default_rng(seed).normal(size=(n, d)) + shift).astype(np.float32)


def write_csv(
    path: Path, X: np.ndarray, y: np.ndarray | None = None, names: Sequence[str] | None = None
) -> Path:
    """Write rows ``X`` (and integer labels ``y`` as a last ``label`` column) as a CSV file with
    the header ``names`` (default ``f0, f1, ...``), values to 9 significant digits."""
    header = list(names or [f"f{j}" for j in range(X.shape[1])])
    header += ["label"] if y is not None else []
    lines = [",".join(header)]
    for i, row in enumerate(X):
        cells = [f"{v:.9g}" for v in row] + ([str(int(y[i]))] if y is not None else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def episode_batch(
    features: int,
    *,
    tasks: int = 3,
    support: int = 6,
    query: int = 8,
    pool: int = 5,
    anomaly_shots: int = 1,
) -> Batch:
    """A seeded meta-batch ``(support_x [T, S, F], support_y [T, S], query_x [T, Q, F],
    query_y [T, Q], pool_x [T, P, F])`` of standard-normal rows (in the default dtype), the last
    ``anomaly_shots`` support rows of each task labelled anomalous and the query alternating
    normal / anomalous."""
    g = torch.Generator().manual_seed(1)
    sx = torch.randn(tasks, support, features, generator=g)
    sy = torch.zeros(tasks, support)
    if anomaly_shots:
        sy[:, -anomaly_shots:] = 1
    qx = torch.randn(tasks, query, features, generator=g)
    qy = (torch.arange(query) % 2).to(torch.float64).expand(tasks, query).contiguous()
    px = torch.randn(tasks, pool, features, generator=g)
    return sx, sy, qx, qy, px


def tanh_teacher(kind: str, features: int, **options: Any) -> Teacher:
    """A small seeded teacher of ``kind`` (hidden 7, 6; embedding 3) whose stack runs with tanh,
    as :func:`higher_meta_gradient` mirrors it; ``options``: further :class:`ModelConfig` fields."""
    torch.manual_seed(0)
    config = ModelConfig(kind=kind, hidden=[7, 6], embedding_dim=3, activation="tanh", **options)
    return build_teacher(features, config)


def tiny_bundle(
    features: int,
    *,
    kind: str = "knn",
    inner_steps: int = 1,
    alignment: AlignmentConfig | None = None,
    scaling: ScalingConfig | None = None,
    **model: Any,
) -> TeacherBundle:
    """An untrained, seeded teacher of ``kind`` (8 hidden units, embedding 4, k = 3, input skip;
    ``model``: other :class:`ModelConfig` fields) for rows of ``features`` columns (after
    ``alignment``; the profile kind adds its profile's), as ``metakd adapt`` loads one: for tests
    of adaptation, scoring and the estimator API."""
    torch.manual_seed(0)
    fields = {"hidden": [8], "embedding_dim": 4, "neighbours": 3, "input_skip": True} | model
    config = ModelConfig(kind=kind, **fields)
    width = features + (config.profile.width if kind == "profile" else 0)
    return TeacherBundle(
        teacher=build_teacher(width, config).eval(),
        model=config,
        inner=InnerConfig(steps=inner_steps, lr=0.05),
        algorithm="maml",
        rates=[],
        scaling=scaling if scaling is not None else ScalingConfig(),
        alignment=alignment if alignment is not None else AlignmentConfig(),
        info={},
    )


# -- oracles -------------------------------------------------------------------------------------


def knn_distances(
    query: np.ndarray,
    ref: np.ndarray,
    k: int,
    *,
    leave_one_out: bool = False,
    metric: str = "minkowski",
) -> np.ndarray:
    """scikit-learn's exact distances ``[N, k]`` (nearest first) from each row of ``query`` to
    its ``k`` nearest rows of ``ref``, an independent oracle of the kNN heads and evidences;
    ``leave_one_out``: query row i is ``ref`` row i and is not its own neighbour."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + int(leave_one_out), metric=metric).fit(ref)
    distances, neighbours = index.kneighbors(query)
    if leave_one_out:
        keep = neighbours != np.arange(len(query))[:, None]
        distances = np.stack([d[m][:k] for d, m in zip(distances, keep, strict=True)])
    return distances


# -- meta-gradient oracles ------------------------------------------------------------------------


def higher_meta_gradient(
    learner: MetaLearner, batch: Batch, *, steps: int, lr: float, head_only: bool
) -> list[Tensor]:
    """The meta-gradient (w.r.t. every teacher parameter) from `higher`'s differentiable SGD on
    the stack, one task at a time: ``steps`` plain SGD steps of rate ``lr`` on every layer, or
    on the last one (``head_only``, ANIL). The stack runs with tanh (a :func:`tanh_teacher`);
    the inner loss reads the teacher's fit scores, the outer loss its scores, and a term of the
    meta-parameters alone (:meth:`Teacher.outer_term`, GANomaly's adversarial one) is added."""
    head = list(learner.teacher.layers[-1].parameters())
    return higher_optimizer_meta_gradient(
        learner,
        batch,
        steps=steps,
        optimizer=lambda stack: torch.optim.SGD(head if head_only else stack, lr=lr),
    )


def loop_meta_gradient(
    learner: MetaLearner,
    batch: Batch,
    *,
    steps: int,
    lr: float,
    first_order: bool = False,
    pool: PoolTerm | None = None,
) -> list[Tensor]:
    """The meta-gradient of the same pure :func:`~metakd.meta.inner.adapt` as the learner's, one
    task at a time (no vmap), with the teacher's outer term added (``pool``: the transductive
    pool term of the inner loss)."""
    teacher = learner.teacher
    sx, sy, qx, qy, px = batch
    tasks = sx.shape[0]
    total = sx.new_zeros(())
    for b in range(tasks):
        adapted, _ = adapt(
            teacher.stack_params(),
            sx[b],
            sy[b],
            teacher=teacher,
            loss=learner.inner_loss,
            steps=steps,
            lr=lr,
            first_order=first_order,
            layers=learner.plan().layers,
            pool_x=px[b],
            pool=pool,
        )
        q, _ = task_scores(
            adapted, qx[b], teacher=teacher, support_x=sx[b], support_y=sy[b], pool_x=px[b]
        )
        total = total + learner.outer_loss(score_logits(teacher, q), qy[b]) / tasks
    extra = teacher.outer_term(sx, sy)
    if extra is not None:
        total = total + extra
    return list(torch.autograd.grad(total, list(teacher.parameters())))


def learner_meta_gradient(learner: MetaLearner, batch: Batch) -> list[Tensor]:
    """The learner's own (batched) meta-gradient w.r.t. every teacher parameter."""
    loss, _ = learner.meta_loss(*batch)
    return list(torch.autograd.grad(loss, list(learner.teacher.parameters())))


def assert_gradients_close(a: Sequence[Tensor], b: Sequence[Tensor]) -> None:
    """Equal to float64 rounding, tensor by tensor."""
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)


def higher_optimizer_meta_gradient(
    learner: MetaLearner,
    batch: Batch,
    *,
    steps: int,
    optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
    override: Callable[[int], dict[str, list[Any]]] | None = None,
    wrt: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """The meta-gradient from `higher`'s differentiable optimisers, one task at a time (see
    :func:`higher_meta_gradient`): ``optimizer(stack parameters)`` builds the ``torch.optim`` one
    it mirrors (``torch.optim.SGD(momentum=...)``, ``torch.optim.Adam``; on the parameters it
    adapts, all of the stack's or some), fresh for each task, and
    ``override(step)`` (1-based) gives hyper-parameters for that step (``diffopt.step(override=)``:
    tensors that require grad, such as Meta-SGD's rates as per-group ``lr``, are differentiated
    through). The gradient is w.r.t. ``wrt`` (default: every teacher parameter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import higher

    teacher = learner.teacher
    sx, sy, qx, qy, px = batch
    tasks = sx.shape[0]
    params = list(teacher.parameters()) if wrt is None else list(wrt)
    total = [torch.zeros_like(p) for p in params]

    def scores(fm, x: Tensor, b: int, *, support: bool) -> Tensor:
        return _higher_scores(teacher, fm, x, batch, b, support=support)

    for b in range(tasks):
        opt = optimizer(list(teacher.layers.parameters()))
        with higher.innerloop_ctx(teacher, opt, copy_initial_weights=False) as (fm, diffopt):
            for step in range(1, steps + 1):
                loss = learner.inner_loss(scores(fm, sx[b], b, support=True), sy[b])
                diffopt.step(loss, override=None if override is None else override(step))
            q = scores(fm, qx[b], b, support=False)
            loss = learner.outer_loss(score_logits(teacher, q), qy[b]) / tasks
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        total = [t + (g if g is not None else 0) for t, g in zip(total, grads, strict=True)]
    extra = teacher.outer_term(sx, sy)
    if extra is not None:
        grads = torch.autograd.grad(extra, params, allow_unused=True)
        total = [t + (g if g is not None else 0) for t, g in zip(total, grads, strict=True)]
    return total


def write_teacher_file(
    bundle: TeacherBundle, path: Path, *, pool_share: dict[str, Any] | None = None
) -> Path:
    """``bundle`` as ``metakd meta-train`` writes ``teacher.pt`` (with the share fit
    ``pool_share``, as the fitter returns it)."""
    from metakd import configio
    from metakd.checkpoint import save_teacher

    save_teacher(
        path,
        teacher=bundle.teacher,
        model=configio.to_dict(bundle.model),
        inner=configio.to_dict(bundle.inner),
        algorithm=bundle.algorithm,
        rates=bundle.rates,
        scaling=configio.to_dict(bundle.scaling),
        alignment=configio.to_dict(bundle.alignment),
        episode={},
        info=bundle.info,
        window=bundle.window,
        pool_share=pool_share,
    )
    return path


def _higher_run(fm: Any, h: Tensor) -> Tensor:
    """A tanh stack's forward pass under higher's functional model ``fm``."""
    for i, layer in enumerate(fm.layers):
        h = F.linear(h, layer.weight, layer.bias)
        h = torch.tanh(h) if i < len(fm.layers) - 1 else h
    return h


def _higher_scores(
    teacher: Teacher, fm: Any, x: Tensor, batch: Batch, b: int, *, support: bool
) -> Tensor:
    """Task ``b``'s scores of rows ``x`` under ``fm`` (``support``: the support's own,
    leave-one-out fit scores), with the reference computed from ``fm``'s outputs."""
    sx, sy, _, _, px = batch
    reference: tuple[Tensor, ...] = ()
    if teacher.uses_reference:
        pool = (_higher_run(fm, px[b]), px[b]) if teacher.uses_pool else (None, None)
        reference = teacher.reference(_higher_run(fm, sx[b]), sx[b], 1 - sy[b], *pool)
    score = teacher.fit_scores if support else teacher.head
    return score(_higher_run(fm, x), x, reference, leave_one_out=support)


def adapt_model(teacher: Path, support: Path, pool: Path, out: Path) -> Path:
    """``metakd adapt`` of ``teacher`` on a support and pool file into ``out`` (tracking off),
    asserted to succeed: a model folder for tests of what reads one."""
    from click.testing import CliRunner

    from metakd.cli import main

    args = ["adapt", "--teacher", str(teacher), "--support", str(support)]
    args += ["--unlabeled", str(pool), "--out", str(out), "--set", "tracking.mode=disabled"]
    adapted = CliRunner().invoke(main, args)
    assert adapted.exit_code == 0, adapted.output
    return out
