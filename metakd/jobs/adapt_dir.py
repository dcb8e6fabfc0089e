"""``metakd adapt --support-dir``: adapt and distil every domain of a folder, one model folder
each, and ``summary.csv``.

A domain is named by its support file's name without the suffix (``plant_a.csv``: ``plant_a``),
and its model folder is ``OUT/<name>``. A name that cannot safely name a folder there is an
error naming the file, before any work (:func:`check_domain_name`): one that is empty, starts
with ``.`` (``.``, ``..``: the file ``...csv``), holds a path separator or a control character,
or is one of the names the run folder itself uses (``summary.csv``, ``run.json``, ``wandb``, in
any case). Every model folder is checked to lie inside the run folder before it is written.
"""

from __future__ import annotations

import os
import time
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd

from metakd import configio
from metakd.checkpoint import atomic_write_text
from metakd.data.readers import SUPPORTED_SUFFIXES
from metakd.detect import AdaptConfig, FewShotDetector, fit_many
from metakd.errors import DataError, MetakdError
from metakd.inputs import folder_inputs
from metakd.jobs.adapt import Domain, read_domain, save_domain
from metakd.persist import TeacherBundle
from metakd.rundir import staged_run_dir
from metakd.tracking import Run, progress_bar

__all__ = [
    "RESERVED_NAMES",
    "SUMMARY_COLUMNS",
    "adapt_folder",
    "check_domain_name",
    "domain_files",
    "run_adapt_dir",
]


#: Names of the run folder's own files and folders, which no domain may take.
RESERVED_NAMES = ("summary.csv", "run.json", "wandb")

#: The columns of ``summary.csv`` written by :func:`run_adapt_dir`.
SUMMARY_COLUMNS = [
    "domain",
    "status",
    "support_rows",
    "unlabeled_rows",
    "threshold",
    "fidelity",
    "seconds",
    "error",
]


def check_domain_name(name: str, path: Path, what: str) -> None:
    """Refuse a domain name (``path``'s name without suffix) that cannot name a model folder
    inside the run folder (see the module docstring).

    Raises:
        DataError: naming the file (quoted where its name holds control characters).
    """
    problem = None
    if not name:
        problem = "is empty"
    elif name.startswith("."):
        problem = "starts with '.'"
    elif any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/")):
        problem = "holds a path separator"
    elif any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name):
        problem = "holds a control character"
    elif name.casefold() in RESERVED_NAMES:
        problem = f"is a name the run folder uses ({', '.join(RESERVED_NAMES)})"
    if problem is not None:
        shown = str(path) if str(path).isprintable() else ascii(str(path))
        raise DataError(
            shown,
            f"{what}: the domain name {ascii(name)} (the file name without its suffix) {problem}, "
            "so it cannot name the domain's model folder; rename the file",
        )


def domain_files(
    support_dir: Path, unlabeled_dir: Path | None, eval_dir: Path | None
) -> list[tuple[str, Path, Path | None, Path | None]]:
    """``(domain, support, unlabeled, eval)`` per task file of ``support_dir`` (sorted by name),
    matched by file name without suffix to the files of the other folders.

    Raises:
        DataError: a folder is missing or has no task files, two files name one domain, a
            file of the other folders has no support file, or a name is not a safe folder name
            (:func:`check_domain_name`).
    """

    def files(folder: Path, what: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise DataError(str(folder), f"{what}: not a directory")
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
                check_domain_name(path.stem, path, what)
                if path.stem in found:
                    raise DataError(
                        str(folder),
                        f"{what}: two files for domain '{path.stem}' ({found[path.stem].name}, "
                        f"{path.name})",
                    )
                found[path.stem] = path
        return found

    supports = files(support_dir, "--support-dir")
    if not supports:
        raise DataError(
            str(support_dir), "--support-dir: no task files (npz, csv, tsv, txt, parquet)"
        )
    unlabeled = files(unlabeled_dir, "--unlabeled-dir") if unlabeled_dir is not None else {}
    evals = files(eval_dir, "--eval-dir") if eval_dir is not None else {}
    for what, extra in (("--unlabeled-dir", unlabeled), ("--eval-dir", evals)):
        orphans = sorted(set(extra) - set(supports))
        if orphans:
            raise DataError(
                f"{what}", f"files without a support file of the same name: {', '.join(orphans)}"
            )
    return [(name, path, unlabeled.get(name), evals.get(name)) for name, path in supports.items()]


def run_adapt_dir(
    config: AdaptConfig,
    *,
    teacher_path: Path,
    support_dir: Path,
    unlabeled_dir: Path | None,
    eval_dir: Path | None,
    out_dir: Path,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``metakd adapt --support-dir``: adapt and distil every domain of a folder, one model folder
    each (``out_dir/DOMAIN``, as ``metakd adapt`` writes), and ``summary.csv``.

    The teacher is adapted on domains of the same shapes in one batched inner loop
    (:func:`~metakd.detector.fit_many`). A domain that fails (unreadable file, too few normals)
    is reported in the summary and skipped; the others finish.

    Returns:
        The summary rows (:data:`SUMMARY_COLUMNS`), one per domain, in name order.
    """
    bundle = TeacherBundle.load(teacher_path)
    rows: list[dict[str, Any]] = []
    domains: list[tuple[str, Domain]] = []
    for name, support_path, unlabeled_path, eval_path in domain_files(
        support_dir, unlabeled_dir, eval_dir
    ):
        try:
            domain = read_domain(
                config,
                bundle,
                support_path=support_path,
                unlabeled_path=unlabeled_path,
                eval_path=eval_path,
            )
        except MetakdError as err:
            rows.append(_summary_row(name, None, None, error=err))
            continue
        domains.append((name, domain))
    with Run(
        out_dir, config=configio.to_dict(config), tracking=config.tracking, job_type="adapt"
    ) as run:
        tick = time.perf_counter()
        detectors = [FewShotDetector(bundle, config=config) for _ in domains]
        with progress_bar(enabled=progress) as bar:
            job = bar.add_task("adapt domains", total=len(domains), info="")
            fitted = fit_many(
                detectors,
                [d.fit_args() for _, d in domains],
                on_fitted=lambda i: bar.update(job, completed=i + 1, info=domains[i][0]),
            )
        per_domain = (time.perf_counter() - tick) / max(1, len(domains))
        for (name, domain), result in zip(domains, fitted, strict=True):
            if isinstance(result, MetakdError):
                rows.append(_summary_row(name, domain, None, error=result))
                continue
            try:
                report, _ = save_domain(
                    result,
                    domain,
                    config,
                    teacher_path=teacher_path,
                    out_dir=_inside(out_dir, name),
                )
            except MetakdError as err:
                rows.append(_summary_row(name, domain, None, error=err))
                continue
            rows.append(_summary_row(name, domain, report, seconds=per_domain))
        rows.sort(key=lambda row: str(row["domain"]))
        frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        atomic_write_text(out_dir / "summary.csv", frame.to_csv(index=False))
        ok = int((frame["status"] == "ok").sum())
        run.summary({"domains": len(frame), "domains_ok": ok, "domains_failed": len(frame) - ok})
    return rows


def _inside(out_dir: Path, name: str) -> Path:
    """The model folder ``out_dir/name``, checked to lie directly inside ``out_dir`` (resolved:
    symlinks, ``..``)."""
    folder = out_dir / name
    if Path(os.path.realpath(folder)).parent != Path(os.path.realpath(out_dir)):
        raise MetakdError(
            f"domain {ascii(name)}: its model folder {folder} is not inside {out_dir}"
        )
    return folder


def _summary_row(
    name: str,
    domain: Domain | None,
    report: dict[str, Any] | None,
    *,
    seconds: float | None = None,
    error: BaseException | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "domain": name,
        "status": "ok" if error is None else "failed",
        "support_rows": None if domain is None else domain.support.n_rows,
        "unlabeled_rows": None if domain is None or domain.pool is None else domain.pool.n_rows,
        "threshold": None,
        "fidelity": None,
        "seconds": None if seconds is None else round(seconds, 3),
        "error": "" if error is None else str(error),
    }
    if report is not None:
        row["threshold"] = report.get("student_threshold", report["teacher_threshold"])
        row["fidelity"] = report.get("fidelity_spearman")
    return row


def adapt_folder(
    *,
    teacher_path: Path,
    support_dir: Path,
    unlabeled_dir: Path | None,
    eval_dir: Path | None,
    out_dir: Path,
    config_path: str | None,
    overrides: list[str],
    overwrite: bool,
    progress: bool,
) -> list[dict[str, Any]]:
    """``metakd adapt --support-dir``: load the config (``--config``, ``--set``), then
    :func:`run_adapt_dir` in a staged run folder that becomes ``out_dir`` when it finished.

    Returns:
        The summary rows (:data:`SUMMARY_COLUMNS`), one per domain, in name order.
    """
    config = configio.load(AdaptConfig, config_path, overrides)
    # Checked (names, matching) before any work; the folders and every file in them are inputs.
    domain_files(support_dir, unlabeled_dir, eval_dir)
    inputs = [
        ("--teacher", teacher_path),
        ("--config", config_path),
        *folder_inputs("--support-dir", support_dir),
        *folder_inputs("--unlabeled-dir", unlabeled_dir),
        *folder_inputs("--eval-dir", eval_dir),
    ]
    with staged_run_dir(out_dir, command="adapt", overwrite=overwrite, inputs=inputs) as stage:
        rows = run_adapt_dir(
            config,
            teacher_path=teacher_path,
            support_dir=support_dir,
            unlabeled_dir=unlabeled_dir,
            eval_dir=eval_dir,
            out_dir=stage,
            progress=progress,
        )
    return rows
