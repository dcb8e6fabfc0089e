"""The suite's fixtures: tiny task files written into ``tmp_path``, small in-memory tasks, a
teacher bundle written as ``teacher.pt``, float64 as the default dtype, and one tiny teacher
meta-trained once per session. Builders and oracles that tests call directly are in
``tests/helpers.py`` (``from helpers import ...``).

The test folders mirror ``metakd``'s packages (``tests/cli`` for ``metakd.cli`` and the
end-to-end command tests, ``tests/meta``, ``tests/models``, ...); ``tests/core`` holds the tests
of its top-level modules. Test file names are unique across folders (pytest's default import
mode imports each by its base name)."""

from __future__ import annotations

import os

# One torch thread for the whole session and the processes its tests start: on 2 cores, two
# threads per tiny operation made the suite 5× slower on a busy machine (41 min against 8.5).
# Tests that need another count set it themselves (meta-train's determinism at threads=2).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import TINY_TRAIN, TrainedRun, sets, write_teacher_file  # noqa: E402

from metakd.data.task import Task  # noqa: E402
from metakd.persist import TeacherBundle  # noqa: E402

torch.set_num_threads(1)

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
    return write_teacher_file


@pytest.fixture
def float64() -> Iterator[None]:
    """float64 as torch's default dtype for the test (the meta-gradient oracles' precision)."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One tiny ``profile`` teacher, meta-trained once per session by ``metakd meta-train`` on the
    synthetic collection (``helpers.TINY_TRAIN``: 20 iterations): its run folder, shared by every
    test that needs a trained teacher but not a particular one. Read it, never write into it
    (copy it where a test needs the folder itself among its files)."""
    from click.testing import CliRunner

    from metakd.cli import main

    run = tmp_path_factory.mktemp("tiny-teacher") / "run"
    args = ["meta-train", "--tasks", "synthetic", "--out", str(run), "--no-progress"]
    result = CliRunner().invoke(main, [*args, *sets(TINY_TRAIN)])
    assert result.exit_code == 0, result.output
    return TrainedRun(run, result.output)
