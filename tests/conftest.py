"""Fixtures that write tiny task files into ``tmp_path`` and build small in-memory tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from metakd.data.task import Task
from metakd.persist import TeacherBundle

WriteTable = Callable[..., Path]
WriteNpz = Callable[..., Path]
MakeTask = Callable[..., Task]
WriteTeacher = Callable[[TeacherBundle, Path], Path]


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
