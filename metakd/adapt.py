"""Where ``metakd adapt``'s names lived before :mod:`metakd.jobs`; re-exported for old imports.

The glue is :mod:`metakd.jobs.adapt` (one domain) and :mod:`metakd.jobs.adapt_dir` (every domain
of a folder); the detector and its persistence are :mod:`metakd.detector` and
:mod:`metakd.persist`.
"""

from __future__ import annotations

from metakd.detect import MIN_NORMALS_WITHOUT_POOL, AdaptConfig, FewShotDetector, score_rows
from metakd.exports import export_torchscript
from metakd.jobs.adapt import Domain, read_domain, run_adapt, save_domain
from metakd.jobs.adapt_dir import SUMMARY_COLUMNS, domain_files, run_adapt_dir
from metakd.persist import TeacherBundle, load_scorer

__all__ = [
    "MIN_NORMALS_WITHOUT_POOL",
    "SUMMARY_COLUMNS",
    "AdaptConfig",
    "Domain",
    "FewShotDetector",
    "TeacherBundle",
    "domain_files",
    "export_torchscript",
    "load_scorer",
    "read_domain",
    "run_adapt",
    "run_adapt_dir",
    "save_domain",
    "score_rows",
]
