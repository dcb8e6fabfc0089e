"""Many domains at once: `metakd adapt --support-dir` and the batched inner loop (fit_many)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import normal_rows, tiny_bundle

from metakd import cli
from metakd.data.transforms import AlignmentConfig
from metakd.detector import AdaptConfig, FewShotDetector, fit_many
from metakd.errors import MetakdError
from metakd.persist import TeacherBundle

# Any feature count, projected to the teacher's 8 inputs.
ANY_WIDTH = AlignmentConfig(kind="project", width=8)


# svdd: layers without biases (vmap returns tensors only; the Nones are put back).
@pytest.mark.parametrize("kind", ["knn", "profile", "svdd"])
def test_batched_fit_equals_separate_fits(kind: str) -> None:
    bundle = tiny_bundle(8, kind=kind, inner_steps=2, alignment=ANY_WIDTH)
    config = AdaptConfig(student=False)
    # Domains 0 and 1 share their shapes (one batched call); 2 has another support size and
    # width; 3 has too few normals and fails alone; 4 and 5 have labelled anomalies (batched
    # together; the profile teacher's score is mixed with its linear evidence in each).
    labels = np.r_[np.zeros(10), np.ones(3)]
    data = [
        (normal_rows(10, 0, d=3), None, normal_rows(40, 1, d=3)),
        (normal_rows(10, 2, d=3, shift=1.0), None, normal_rows(40, 3, d=3)),
        (normal_rows(7, 4, d=5), None, normal_rows(30, 5, d=5)),
        (normal_rows(3, 6, d=3), np.array([1, 1, 1]), None),
        (
            np.r_[normal_rows(10, 7, d=3), normal_rows(3, 8, d=3, shift=3.0)],
            labels,
            normal_rows(40, 9, d=3),
        ),
        (
            np.r_[normal_rows(10, 10, d=3), normal_rows(3, 11, d=3, shift=3.0)],
            labels,
            normal_rows(40, 12, d=3),
        ),
    ]
    results = fit_many([FewShotDetector(bundle, config=config) for _ in data], data)
    assert isinstance(results[3], MetakdError) and "normal" in str(results[3])
    rest = data[:3] + data[4:]
    for (X, y, pool), batched in zip(rest, results[:3] + results[4:], strict=True):
        assert isinstance(batched, FewShotDetector)
        alone = FewShotDetector(bundle, config=config).fit(X, y, unlabeled=pool)
        new = normal_rows(25, 9, d=X.shape[1], shift=0.5)
        np.testing.assert_allclose(
            batched.decision_function(new), alone.decision_function(new), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(batched.threshold_, alone.threshold_, rtol=1e-4, atol=1e-5)
        assert batched.report_["linear_mix"] == alone.report_["linear_mix"]
    assert [r.report_["linear_mix"] for r in results[4:]] == [float(kind == "profile")] * 2


def test_support_dir_adapts_every_domain_and_reports_a_broken_one(
    tmp_path: Path, write_teacher: Callable[[TeacherBundle, Path], Path]
) -> None:
    supports, pools = tmp_path / "support", tmp_path / "pool"
    supports.mkdir()
    pools.mkdir()
    for i, name in enumerate(["line1", "line2", "line3"]):
        frame = pd.DataFrame(normal_rows(12, i, d=3), columns=["a", "b", "c"])
        frame["label"] = 0
        frame.to_csv(supports / f"{name}.csv", index=False)
        pd.DataFrame(normal_rows(50, 10 + i, d=3), columns=["a", "b", "c"]).to_csv(
            pools / f"{name}.csv", index=False
        )
    (supports / "broken.csv").write_text("a,b,c,label\n1,2,oops,0\n")
    out = tmp_path / "models"
    result = CliRunner().invoke(
        cli.main,
        [
            "adapt",
            "--teacher",
            str(
                write_teacher(
                    tiny_bundle(8, inner_steps=2, alignment=ANY_WIDTH), tmp_path / "teacher.pt"
                )
            ),
        ]
        + ["--support-dir", str(supports)]
        + ["--unlabeled-dir", str(pools), "--out", str(out), "--no-progress"]
        + ["--set", "distill.steps=40", "--tracking", "disabled"],
    )
    assert result.exit_code != 0
    assert "1 of 4 domains failed (broken)" in result.output
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["domain"]) == ["broken", "line1", "line2", "line3"]
    assert list(summary["status"]) == ["failed", "ok", "ok", "ok"]
    assert "column 'c' is not numeric" in summary.loc[0, "error"]
    assert (summary.loc[1:, "support_rows"] == 12).all()
    assert (summary.loc[1:, "unlabeled_rows"] == 50).all()
    assert summary.loc[1:, "fidelity"].notna().all()
    for name in ["line1", "line2", "line3"]:
        assert (out / name / "student.pt").is_file() and (out / name / "report.json").is_file()
    assert not (out / "broken").exists()
    # Each folder is what `metakd adapt` writes for that domain alone.
    alone = tmp_path / "alone"
    single = CliRunner().invoke(
        cli.main,
        ["adapt", "--teacher", str(tmp_path / "teacher.pt"), "--support"]
        + [str(supports / "line2.csv"), "--unlabeled", str(pools / "line2.csv")]
        + ["--out", str(alone), "--no-progress", "--set", "distill.steps=40"]
        + ["--tracking", "disabled"],
    )
    assert single.exit_code == 0, single.output
    rows = tmp_path / "rows.csv"
    pd.DataFrame(normal_rows(20, 99, d=3), columns=["a", "b", "c"]).to_csv(rows, index=False)
    scores = []
    for model in (out / "line2", alone):
        scored = CliRunner().invoke(
            cli.main, ["score", "--model", str(model / "student.pt"), "--data", str(rows)]
        )
        assert scored.exit_code == 0, scored.output
        scores.append(np.array([float(r.split(",")[0]) for r in scored.output.split()[1:]]))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-4, atol=1e-5)


def test_support_dir_flag_rules(
    tmp_path: Path, write_teacher: Callable[[TeacherBundle, Path], Path]
) -> None:
    teacher = str(
        write_teacher(tiny_bundle(8, inner_steps=2, alignment=ANY_WIDTH), tmp_path / "teacher.pt")
    )
    (tmp_path / "s").mkdir()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "orphan.csv").write_text("a\n1\n")
    cases = [
        (["--support", "x.csv", "--unlabeled-dir", str(tmp_path)], "go with --support-dir"),
        (["--support-dir", str(tmp_path / "s"), "--unlabeled", "x.csv"], "--unlabeled-dir"),
        ([], "needs --support FILE or --support-dir DIR"),
        (["--support-dir", str(tmp_path / "s")], "no task files"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(
            cli.main, ["adapt", "--teacher", teacher, "--out", str(tmp_path / "o"), *extra]
        )
        assert result.exit_code != 0 and message in result.output, result.output
    (tmp_path / "s" / "one.csv").write_text("a,label\n1,0\n")
    result = CliRunner().invoke(
        cli.main,
        ["adapt", "--teacher", teacher, "--out", str(tmp_path / "o")]
        + ["--support-dir", str(tmp_path / "s"), "--unlabeled-dir", str(tmp_path / "p")],
    )
    assert result.exit_code != 0 and "without a support file" in result.output
    assert not (tmp_path / "o").exists()
