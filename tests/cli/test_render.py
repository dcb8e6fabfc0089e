"""What the commands print: tables whole at any width (folded on a narrow terminal, never cut;
unbounded off a terminal) and honest row names in meta-train's held-out table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from metakd.cli import render
from metakd.config import load_train_config
from metakd.train import TrainResult


def _wide_table() -> Table:
    table = Table(title="adapted runs/mvtec/teacher.pt to data/a_rather_long_support_file.csv")
    for name in ("detector", "parameters", "threshold", "auroc", "auprc", "precision", "f1"):
        table.add_column(name, justify="left" if name == "detector" else "right")
    table.add_row("teacher", "123456", "0.1234", "0.912", "0.801", "0.700", "0.674")
    table.add_row("student", "417", "0.9876", "0.905", "0.790", "0.650", "0.661")
    return table


def test_off_a_terminal_nothing_is_squeezed() -> None:
    out = render.console()  # pytest's stdout is no terminal
    assert out.width == render.UNBOUNDED_WIDTH
    table = Table()
    table.add_column("domain")
    table.add_column("status")
    table.add_row("d1", "failed: " + "a long error message naming a column " * 8)
    out = Console(width=render.UNBOUNDED_WIDTH, record=True)
    render.print_table(out, table)
    assert "a long error message naming a column " * 8 in out.export_text()


def test_a_narrow_terminal_gets_the_whole_table() -> None:
    for width in (80, 64, 40):
        out = Console(width=width, record=True)
        render.print_table(out, _wide_table())
        text = out.export_text()
        assert "…" not in text, f"a cell was cut at width {width}"
        assert max(len(line) for line in text.splitlines()) <= width
        # Folded cells keep every character, whatever the lines they end up on.
        columns = _wide_table().columns
        cells = "".join(f"{c.header}{''.join(map(str, c.cells))}" for c in columns)
        assert sorted(c for c in text if c.isdigit()) == sorted(c for c in cells if c.isdigit())
    out = Console(width=64, record=True)
    render.print_table(out, _wide_table())
    assert "teacher       123456" in out.export_text(), "at 64 columns, frameless on one line"


def test_the_untrained_row_is_not_called_a_random_init(capsys, tmp_path: Path) -> None:
    config = load_train_config(None, ["tracking.mode=disabled"])
    for key in ("untrained", "random_init"):  # the old key of results written before
        result = TrainResult(
            out_dir=tmp_path,
            best_iteration=3,
            best_val_auroc=0.9,
            test_auroc={"metakd": 0.91, key: 0.88, "knn_support": 0.87},
            test_tasks=["a"],
            seconds=1.0,
        )
        render.print_meta_train(config, result, tmp_path)
        out = capsys.readouterr().out
        assert "same teacher, not meta-trained (its initialisation), adapted" in out
        assert "random init" not in out


def test_share_aurocs_that_differ_print_differently(capsys, tmp_path: Path) -> None:
    """A share chosen over 0.99966 against 1.0 does not read "1.000 at 0 … 1.000 at 0.2"."""
    config = load_train_config(None, ["tracking.mode=disabled"])
    curve = {f"{i / 10:g}": 1.0 for i in range(11)} | {"0": 0.99966, "0.1": 0.99994}
    tied = {f"{i / 10:g}": 0.9 for i in range(11)}
    fit = {
        "share": 0.2,
        "episodes": 32,
        "auroc": curve,
        "with_anomalies": {"share": 0.0, "episodes": 32, "auroc": tied, "anomaly_shots": 5},
    }
    result = TrainResult(
        out_dir=tmp_path,
        best_iteration=3,
        best_val_auroc=0.9,
        test_auroc={},
        test_tasks=[],
        seconds=1.0,
        pool_share=fit,
    )
    render.print_meta_train(config, result, tmp_path)
    out = " ".join(capsys.readouterr().out.split())
    assert "mean AUROC 0.9997 at 0, the teacher alone, 1.0000 at 1, the Gaussian alone, " in out
    assert "1.0000 at 0.2)" in out
    # Equal values keep 3 decimals.
    assert "anomalies (fitted the same way with 5 in each: 0.900 at 0, 0.900 at 1)" in out
