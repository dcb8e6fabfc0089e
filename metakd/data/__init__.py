"""Tasks and how they are read, windowed, scaled, aligned and grouped into collections."""

from metakd.data.builtin import ANOMALY_TYPES, digits_collection, synthetic_collection
from metakd.data.collection import (
    CollectionSpec,
    SplitConfig,
    TaskCollection,
    list_collections,
    load_collection,
    read_manifest,
)
from metakd.data.readers import SUPPORTED_SUFFIXES, ReadOptions, read_task
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
    "synthetic_collection",
    "window_task",
]
