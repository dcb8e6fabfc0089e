"""Meta-training throughput: metakd's batched path vs a per-task loop vs `higher`.

Second-order MAML meta-gradients (forward + backward of one meta-batch) measured side by side in
one process, at meta-batch 1, 8 and 32 and two model sizes. Prints tasks per second, the ratios,
the largest meta-gradient difference from `higher`, the same at the largest meta-batch with
`torch.compile` (``meta.compile: true``), and the large model's FLOP/s as a fraction of this
machine's matmul peak, measured in the same run, two ways: the FLOPs metakd executes, and the
FLOPs the textbook dense formulation needs (what higher and the loop execute; the "model FLOPs
utilisation" convention, so work metakd avoids is not counted as if it were done).

Then every teacher kind (``model.kind``) at meta-training's defaults: meta-batch 16, 3 inner
steps, episodes of the default shape (10 support, 32 query, 32 pool rows) at the MVTec widths
(1000 features, projected to 64 by the default alignment; the profile teacher reads 21 profile
columns besides), timed on one torch thread as ``metakd meta-train`` runs it, beside the MLP
teacher of the same hidden sizes on the 1000 raw features and on the 64 projected ones.

Then the inner optimisers (``inner.optimizer``): second-order MAML whose inner loop is Adam,
metakd's pure Adam (:mod:`metakd.meta.optim`, the dense path of the one inner loop) against
`higher`'s ``DifferentiableAdam`` (``torch.optim.Adam`` in ``higher.innerloop_ctx``) on the same
problem, with metakd's plain-SGD inner loop beside them; tasks per second and the largest
meta-gradient difference from higher (its ``eps`` mapped per step to torch's convention, see
``tests/meta/test_inner_optimizers.py``), in float32 as timed and in float64, next to the largest
meta-gradient entry: the derivative of Adam's ``m̂ / (√v̂ + ε)`` is of order ``1/ε`` where a
gradient is of order ``ε``, so at torch's ``ε = 1e-8`` float32 rounding shows in second-order
meta-gradients, which float64 removes.

Usage: python benchmarks/meta_train_speed.py [--seconds 2] [--batches 1,8,32] [--no-compile]
       python benchmarks/meta_train_speed.py --kinds-only       # only the teacher kinds
       python benchmarks/meta_train_speed.py --optimizers-only  # only the inner optimisers
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from metakd.meta.learners import MAML, InnerConfig, MetaConfig
from metakd.models.teachers import ModelConfig, build_teacher, score_logits

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import higher

SHOTS, QUERY, STEPS, LR = 10, 64, 2, 0.1
ADAM_LR = 0.01  # Adam's steps are about lr per weight, whatever the gradient's scale
SIZES = {"small": (64, [64, 64]), "large": (1000, [256, 128])}


def make_batch(b: int, d: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(b, SHOTS, d, generator=g)
    sy = torch.zeros(b, SHOTS)
    qx = torch.randn(b, QUERY, d, generator=g)
    qy = (torch.arange(QUERY) % 4 == 0).float().expand(b, QUERY).contiguous()
    return sx, sy, qx, qy


def ours(learner: MAML, batch) -> None:
    loss, _ = learner.meta_loss(*batch)
    loss.backward()


def compiled(learner: MAML) -> Callable:
    """Our path with the meta-loss compiled, as ``meta.compile: true`` does in training."""
    meta_loss = torch.compile(learner.meta_loss)

    def run(learner: MAML, batch) -> None:
        loss, _ = meta_loss(*batch)
        loss.backward()

    return run


def loop(learner: MAML, batch) -> None:
    """The textbook per-task loop: functional_call + autograd.grad(create_graph=True)."""
    teacher, (sx, sy, qx, qy) = learner.teacher, batch
    b = sx.shape[0]
    for i in range(b):
        params = dict(teacher.named_parameters())
        for _ in range(STEPS):
            loss = learner.inner_loss(functional_call(teacher, params, (sx[i],)), sy[i])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {k: v - LR * g for (k, v), g in zip(params.items(), grads, strict=True)}
        q = functional_call(teacher, params, (qx[i],))
        (learner.outer_loss(score_logits(teacher, q), qy[i]) / b).backward()


def with_higher(learner: MAML, batch) -> None:
    teacher, (sx, sy, qx, qy) = learner.teacher, batch
    b = sx.shape[0]
    opt = torch.optim.SGD(teacher.parameters(), lr=LR)
    for i in range(b):
        with higher.innerloop_ctx(teacher, opt, copy_initial_weights=False) as (fm, diffopt):
            for _ in range(STEPS):
                diffopt.step(learner.inner_loss(fm(sx[i]), sy[i]))
            (learner.outer_loss(score_logits(teacher, fm(qx[i])), qy[i]) / b).backward()


def with_higher_adam(learner: MAML, batch) -> None:
    """`higher`'s differentiable Adam on the same problem as ``learner``'s Adam inner loop."""
    teacher, (sx, sy, qx, qy) = learner.teacher, batch
    b = sx.shape[0]
    (beta1, beta2), eps = learner.inner.betas, learner.inner.eps
    opt = torch.optim.Adam(teacher.parameters(), lr=learner.inner.lr, betas=(beta1, beta2), eps=eps)
    for i in range(b):
        with higher.innerloop_ctx(teacher, opt, copy_initial_weights=False) as (fm, diffopt):
            for step in range(1, learner.inner.steps + 1):
                # higher adds eps to √v before the bias correction, torch (and metakd) after it.
                override = {"eps": [eps * (1 - beta2**step) ** 0.5]}
                diffopt.step(learner.inner_loss(fm(sx[i]), sy[i]), override=override)
            (learner.outer_loss(score_logits(teacher, fm(qx[i])), qy[i]) / b).backward()


def best_cpu_time(fn: Callable, learner: Any, batch: Any, seconds: float) -> float:
    """CPU seconds per call, the least of a timing window (at least three calls): on one torch
    thread this is the call's own work, which other load on a shared machine barely moves."""
    fn(learner, batch)  # warm-up
    best, calls = float("inf"), 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or calls < 3:
        learner.zero_grad(set_to_none=True)
        t = time.process_time()
        fn(learner, batch)
        best, calls = min(best, time.process_time() - t), calls + 1
    return best


def optimizers_table(seconds: float, batches: list[int]) -> None:
    """Second-order MAML with an Adam inner loop: metakd against higher (and metakd's SGD), on
    one torch thread, by CPU time."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _optimizers_table(seconds, batches)
    finally:
        torch.set_num_threads(previous)


def _optimizers_table(seconds: float, batches: list[int]) -> None:
    print(
        f"\ninner optimisers: second-order MAML, {STEPS} inner steps of Adam (lr {ADAM_LR}) or "
        f"SGD (lr {LR}), {SHOTS} shots, {QUERY} query rows; mlp teacher; 1 torch thread, "
        "tasks per CPU second"
    )
    header = (
        f"{'model':>6} {'B':>3} | {'Adam':>9} {'higher':>9} {'SGD':>9} | "
        f"{'Adam ÷ higher':>13} {'SGD ÷ Adam':>10} | "
        f"{'max|Δg| f32':>11} {'f64':>8} {'max|g|':>8}"
    )
    print(f"{'tasks/CPU s':>22}\n" + header + "\n" + "-" * len(header))
    for size, (d, hidden) in SIZES.items():
        torch.manual_seed(0)
        teacher = build_teacher(d, ModelConfig(kind="mlp", hidden=hidden))
        adam = MAML(
            teacher,
            inner=InnerConfig(steps=STEPS, lr=ADAM_LR, optimizer="adam"),
            meta=MetaConfig(),
            anomaly_shots=0,
        )
        sgd = MAML(
            teacher, inner=InnerConfig(steps=STEPS, lr=LR), meta=MetaConfig(), anomaly_shots=0
        )
        adam64 = MAML(
            copy.deepcopy(teacher).double(), inner=adam.inner, meta=MetaConfig(), anomaly_shots=0
        )
        for b in batches:
            batch = make_batch(b, d)
            g = grads_of(ours, adam, batch)
            diff = (g - grads_of(with_higher_adam, adam, batch)).abs().max()
            batch64 = tuple(t.double() for t in batch)
            g64 = grads_of(ours, adam64, batch64)
            diff64 = (g64 - grads_of(with_higher_adam, adam64, batch64)).abs().max()
            t_adam = best_cpu_time(ours, adam, batch, seconds)
            t_higher = best_cpu_time(with_higher_adam, adam, batch, seconds)
            t_sgd = best_cpu_time(ours, sgd, batch, seconds)
            print(
                f"{size:>6} {b:>3} | {b / t_adam:9.1f} {b / t_higher:9.1f} {b / t_sgd:9.1f} | "
                f"{t_higher / t_adam:13.2f} {t_adam / t_sgd:10.2f} | "
                f"{diff:11.1e} {diff64:8.1e} {g64.abs().max():8.1e}"
            )


def grads_of(fn: Callable, learner: MAML, batch) -> Tensor:
    learner.zero_grad(set_to_none=True)
    fn(learner, batch)
    return torch.cat([p.grad.flatten() for p in learner.teacher.parameters()])


def time_it(fn: Callable, learner: MAML, batch, seconds: float) -> float:
    """Seconds per call (median of repeated timing windows)."""
    fn(learner, batch)  # warm-up
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        learner.zero_grad(set_to_none=True)
        t = time.perf_counter()
        fn(learner, batch)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def best_time(fn: Callable, learner: Any, batch: Any, seconds: float) -> float:
    """Seconds per call, the fastest of a timing window: on a shared machine other work only
    ever adds time, so the minimum is the steadiest estimate of the call's own cost."""
    fn(learner, batch)  # warm-up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        learner.zero_grad(set_to_none=True)
        t = time.perf_counter()
        fn(learner, batch)
        best = min(best, time.perf_counter() - t)
    return best


def flops_of(fn: Callable, learner: MAML, batch) -> int:
    learner.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        fn(learner, batch)
    return counter.get_total_flops()


def matmul_peak(seconds: float) -> float:
    """FLOP/s of a large square float32 matmul on this machine (best of several runs)."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def kinds_table(seconds: float) -> None:
    """Meta-gradient time of every teacher kind at meta-training's defaults (one thread; the
    fastest call of each window)."""
    from metakd.config import TrainConfig
    from metakd.models.teachers import teacher_kinds
    from metakd.train import init_learner

    defaults = TrainConfig()
    episode, width, raw = defaults.episode, 64, 1000
    print(
        f"\nteacher kinds, meta-training defaults: {defaults.meta.algorithm}, meta-batch "
        f"{episode.meta_batch}, {defaults.inner.steps} inner steps, {episode.shots} shots, "
        f"{episode.query_size} query and {episode.pool_size} pool rows; 1 torch thread"
    )
    header = f"{'kind':>12} {'input':>6} | {'ms/batch':>9} {'tasks/s':>8} | {'÷ mlp 1000':>10} {'÷ mlp 64':>9}"
    print(header + "\n" + "-" * len(header))
    rows: list[tuple[str, int, float]] = []
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # meta-train's default (`threads`)
    try:
        for kind in ["mlp@1000", *teacher_kinds()]:
            name = kind.split("@")[0]
            config = TrainConfig(model=dataclasses.replace(defaults.model, kind=name))
            d = (
                raw
                if kind == "mlp@1000"
                else width + config.model.profile.width * (name == "profile")
            )
            learner = init_learner(config, d, seed=0)
            g = torch.Generator().manual_seed(0)
            b, q, p = episode.meta_batch, episode.query_size, episode.pool_size
            sx = torch.randn(b, episode.shots, d, generator=g)
            qx = torch.randn(b, q, d, generator=g)
            px = torch.randn(b, p, d, generator=g)
            qy = (torch.arange(q) < episode.query_anomalies).float().expand(b, q).contiguous()
            batch = (sx, torch.zeros(b, episode.shots), qx, qy, px)

            def step(learner: Any, batch: tuple[Tensor, ...]) -> None:
                learner.meta_gradients(*batch)

            rows.append((kind, d, best_time(step, learner, batch, seconds)))
    finally:
        torch.set_num_threads(previous)
    mlp = {kind: t for kind, _, t in rows if kind.startswith("mlp")}
    for kind, d, t in rows:
        print(
            f"{kind:>12} {d:>6} | {t * 1e3:9.1f} {episode.meta_batch / t:8.1f} | "
            f"{t / mlp['mlp@1000']:10.2f} {t / mlp['mlp']:9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per measurement")
    parser.add_argument("--batches", default="1,8,32", help="meta-batch sizes")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile measurement"
    )
    parser.add_argument("--kinds-only", action="store_true", help="only the teacher kinds")
    parser.add_argument(
        "--optimizers-only", action="store_true", help="only the inner optimisers (Adam vs higher)"
    )
    args = parser.parse_args()
    if args.kinds_only:
        kinds_table(args.seconds)
        return
    batches = [int(b) for b in args.batches.split(",")]
    if args.optimizers_only:
        optimizers_table(args.seconds, batches)
        return
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; second-order MAML, "
        f"{STEPS} inner steps, {SHOTS} shots, {QUERY} query rows"
    )
    peak = matmul_peak(args.seconds)
    print(f"matmul peak (2048² float32): {peak / 1e9:.1f} GFLOP/s\n")
    header = f"{'model':>6} {'B':>3} | {'metakd':>9} {'loop':>9} {'higher':>9} | {'×loop':>6} {'×higher':>8} | {'max|Δg|':>8}"
    print(header + "\n" + "-" * len(header))
    for size, (d, hidden) in SIZES.items():
        teacher = build_teacher(d, ModelConfig(kind="mlp", hidden=hidden))
        learner = MAML(
            teacher, inner=InnerConfig(steps=STEPS, lr=LR), meta=MetaConfig(), anomaly_shots=0
        )
        for b in batches:
            batch = make_batch(b, d)
            diff = (
                (grads_of(ours, learner, batch) - grads_of(with_higher, learner, batch)).abs().max()
            )
            t_ours = time_it(ours, learner, batch, args.seconds)
            t_loop = time_it(loop, learner, batch, args.seconds)
            t_higher = time_it(with_higher, learner, batch, args.seconds)
            print(
                f"{size:>6} {b:>3} | {b / t_ours:9.1f} {b / t_loop:9.1f} {b / t_higher:9.1f} | "
                f"{t_loop / t_ours:6.2f} {t_higher / t_ours:8.2f} | {diff:8.1e}"
            )
            if b == max(batches):
                last = (learner, batch, t_ours, t_higher)
        if not args.no_compile:
            learner, batch, t_ours, t_higher = last
            fn = compiled(learner)
            tick = time.perf_counter()
            fn(learner, batch)
            compile_seconds = time.perf_counter() - tick
            diff = (
                (grads_of(fn, learner, batch) - grads_of(with_higher, learner, batch)).abs().max()
            )
            t_compiled = time_it(fn, learner, batch, args.seconds)
            b = batch[0].shape[0]
            print(
                f"{size:>6} {b:>3} | compiled: {b / t_compiled:9.1f} tasks/s, "
                f"{t_higher / t_compiled:.2f}x higher, {t_ours / t_compiled:.2f}x eager | "
                f"max|Δg| {diff:.1e} | compile {compile_seconds:.0f} s"
            )
        if size == "large":
            executed = flops_of(ours, learner, batch)
            dense = flops_of(loop, learner, batch)
            timed = {"eager": t_ours} | ({} if args.no_compile else {"compiled": t_compiled})
        print()
    print(f"large model, meta-batch {max(batches)}, as fractions of the matmul peak:")
    print(
        f"  the dense formulation needs {dense / 1e9:.2f} GFLOP per meta-batch; higher runs it at "
        f"{dense / t_higher / 1e9:.1f} GFLOP/s = {dense / t_higher / peak:.0%}"
    )
    for name, t in timed.items():
        print(
            f"  metakd {name:8s}: executes {executed / 1e9:.2f} GFLOP at "
            f"{executed / t / 1e9:.1f} GFLOP/s = {executed / t / peak:.0%}; dense-equivalent "
            f"(model FLOPs) {dense / t / 1e9:.1f} GFLOP/s = {dense / t / peak:.0%}"
        )
    optimizers_table(args.seconds, batches)
    kinds_table(args.seconds)


if __name__ == "__main__":
    main()
