"""Tasks and how they are read, windowed, scaled, aligned and grouped into collections.

One module per role: :mod:`~metakd.data.task` (the :class:`Task`), :mod:`~metakd.data.readers`
(task files, one module per format), :mod:`~metakd.data.collection` (collections and their
lookup), :mod:`~metakd.data.manifests` (the YAML manifests), :mod:`~metakd.data.splits` (the
task split), :mod:`~metakd.data.builtin` and :mod:`~metakd.data.prior` (generated tasks),
:mod:`~metakd.data.windows` and :mod:`~metakd.data.transforms` (windowing, scaling, alignment).
"""

from metakd.data.builtin import ANOMALY_TYPES, digits_collection, synthetic_collection
from metakd.data.collection import TaskCollection, list_collections, load_collection
from metakd.data.manifests import CollectionSpec, read_manifest
from metakd.data.readers import SUPPORTED_SUFFIXES, ReadOptions, read_task, register_format
from metakd.data.splits import SplitConfig
from metakd.data.task import Task
from metakd.data.transforms import (
    AlignmentConfig,
    Scaler,
    ScalingConfig,
    align_features,
    check_feature_counts,
    projection_matrix,
)
from metakd.data.windows import WindowConfig, window_task

__all__ = [
    "ANOMALY_TYPES",
    "SUPPORTED_SUFFIXES",
    "AlignmentConfig",
    "CollectionSpec",
    "ReadOptions",
    "Scaler",
    "ScalingConfig",
    "SplitConfig",
    "Task",
    "TaskCollection",
    "WindowConfig",
    "align_features",
    "check_feature_counts",
    "digits_collection",
    "list_collections",
    "load_collection",
    "projection_matrix",
    "read_manifest",
    "read_task",
    "register_format",
    "synthetic_collection",
    "window_task",
]
