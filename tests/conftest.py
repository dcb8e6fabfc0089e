"""Fixtures that write tiny task files into ``tmp_path`` and build small in-memory tasks; helpers
(``from conftest import ...``) that build a tiny teacher bundle and a seeded meta-batch."""

from __future__ import annotations

import os

# One torch thread for the whole session and the processes its tests start: on 2 cores, two
# threads per tiny operation made the suite 5× slower on a busy machine (41 min against 8.5).
# Tests that need another count set it themselves (meta-train's determinism at threads=2).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.meta.learners import InnerConfig
from metakd.models.teachers import ModelConfig, TeacherKind, build_teacher
from metakd.persist import TeacherBundle

torch.set_num_threads(1)

WriteTable = Callable[..., Path]
WriteNpz = Callable[..., Path]
MakeTask = Callable[..., Task]
WriteTeacher = Callable[[TeacherBundle, Path], Path]


def episode_batch(
    features: int, *, tasks: int = 3, support: int = 6, query: int = 8, pool: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded meta-batch ``(support_x [T, S, F], support_y [T, S], query_x [T, Q, F],
    query_y [T, Q], pool_x [T, P, F])`` of standard-normal rows, the last support row of each
    task labelled anomalous and the query alternating normal / anomalous."""
    g = torch.Generator().manual_seed(1)
    sx = torch.randn(tasks, support, features, generator=g)
    sy = torch.zeros(tasks, support)
    sy[:, -1] = 1
    qx = torch.randn(tasks, query, features, generator=g)
    qy = (torch.arange(query) % 2).to(torch.float64).expand(tasks, query).contiguous()
    px = torch.randn(tasks, pool, features, generator=g)
    return sx, sy, qx, qy, px


def tiny_bundle(
    features: int,
    *,
    kind: TeacherKind = "knn",
    inner_steps: int = 1,
    alignment: AlignmentConfig | None = None,
) -> TeacherBundle:
    """An untrained, seeded teacher of ``kind`` (8 hidden units, embedding 4, k = 3, input skip)
    for rows of ``features`` columns (after ``alignment``; the profile kind adds its profile's),
    as ``metakd adapt`` loads one: for tests of adaptation, scoring and the estimator API."""
    torch.manual_seed(0)
    model = ModelConfig(kind=kind, hidden=[8], embedding_dim=4, neighbours=3, input_skip=True)
    width = features + (model.profile.width if kind == "profile" else 0)
    return TeacherBundle(
        teacher=build_teacher(width, model).eval(),
        model=model,
        inner=InnerConfig(steps=inner_steps, lr=0.05),
        algorithm="maml",
        rates=[],
        scaling=ScalingConfig(),
        alignment=alignment if alignment is not None else AlignmentConfig(),
        info={},
    )


@pytest.fixture
def write_table(tmp_path: Path) -> WriteTable:
    """Write a delimited text file: ``write_table("a.csv", header, rows, sep=",")``."""

    def write(
        name: str, header: Sequence[str], rows: Sequence[Sequence[object]], sep: str = ","
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [sep.join(header)] + [
            sep.join("" if v is None else str(v) for v in r) for r in rows
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    return write


@pytest.fixture
def write_npz(tmp_path: Path) -> WriteNpz:
    """Write an ``.npz`` task: ``write_npz("a.npz", X, y=None, feature_names=None)``."""

    def write(
        name: str,
        X: np.ndarray,
        y: np.ndarray | None = None,
        feature_names: np.ndarray | None = None,
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"X": X}
        if y is not None:
            arrays["y"] = y
        if feature_names is not None:
            arrays["feature_names"] = feature_names
        np.savez(path, **arrays)
        return path

    return write


@pytest.fixture
def make_task() -> MakeTask:
    """Build a task with given label counts and Gaussian features (anomalies shifted by 3)."""

    def make(
        name: str = "task",
        *,
        normals: int = 40,
        anomalies: int = 10,
        unlabelled: int = 0,
        features: int = 3,
        seed: int = 0,
    ) -> Task:
        rng = np.random.default_rng(seed)
        y = np.repeat(np.array([0, 1, -1], dtype=np.int64), [normals, anomalies, unlabelled])
        y = y[rng.permutation(len(y))]
        X = rng.normal(size=(len(y), features)) + 3.0 * (y == 1)[:, None]
        return Task(
            name=name,
            X=X.astype(np.float32),
            y=y,
            feature_names=tuple(f"x{j}" for j in range(features)),
            source=f"test:{name}",
        )

    return make


@pytest.fixture
def npz_dir(tmp_path: Path) -> Path:
    """A folder of five ADBench-style ``.npz`` tasks with 4 features and 60 rows each."""
    folder = tmp_path / "npz_tasks"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(["1_alpha", "2_beta", "10_gamma", "3_delta", "20_eps"]):
        y = np.zeros(60, dtype=np.int32)
        y[: 6 + i] = 1
        X = rng.normal(size=(60, 4)) + 4.0 * y[:, None]
        np.savez(folder / f"{name}.npz", X=X, y=y)
    (folder / "README.md").write_text("not a task\n")
    return folder


@pytest.fixture
def write_teacher() -> WriteTeacher:
    """Write a bundle as the ``teacher.pt`` meta-train writes: ``write_teacher(bundle, path)``."""
    from metakd import configio
    from metakd.checkpoint import save_teacher

    def write(bundle: TeacherBundle, path: Path) -> Path:
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
        )
        return path

    return write
