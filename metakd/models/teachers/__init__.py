"""The teachers, one ``model.kind`` per module, each registered by its decorator.

* :mod:`.base`: the :class:`Teacher` interface, :func:`register_kind`, :func:`build_teacher`;
* :mod:`.config`: :class:`ModelConfig` and the registry of the kinds' own sections;
* :mod:`.distance`: the masked kNN kernel the distance heads share;
* one module per kind: ``profile`` (the default), ``svdd``, ``knn``, ``autoencoder``, ``mlp``,
  ``ganomaly``, ``gaussian``, ``vae``.

Importing this package imports every module in it, so every kind registers itself
(``teacher_kinds()`` lists the default first): a new kind is a new module here holding a
:class:`Teacher` subclass decorated ``@register_kind("name")`` (with ``settings=`` its own
config dataclass, if it has settings: the section ``model.<name>``), and nothing else.
"""

import importlib
import pkgutil

from metakd.models.teachers.autoencoder import AutoEncoder
from metakd.models.teachers.base import (
    LogitScorer,
    Reference,
    Teacher,
    build_teacher,
    check_kind,
    count_parameters,
    register_kind,
    score_logits,
    teacher_kinds,
)
from metakd.models.teachers.config import KIND_SETTINGS, ModelConfig
from metakd.models.teachers.distance import _masked_knn
from metakd.models.teachers.embedding import _DistanceTeacher
from metakd.models.teachers.ganomaly import GANomalyConfig
from metakd.models.teachers.gaussian import GaussianConfig
from metakd.models.teachers.knn import KNNNet
from metakd.models.teachers.mlp import MLPScorer
from metakd.models.teachers.profile import ProfileNet
from metakd.models.teachers.svdd import SVDDNet
from metakd.models.teachers.vae import VAEConfig

# Every module here: each kind registers itself when its module is imported.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AutoEncoder",
    "GANomalyConfig",
    "GaussianConfig",
    "KIND_SETTINGS",
    "KNNNet",
    "LogitScorer",
    "MLPScorer",
    "ModelConfig",
    "ProfileNet",
    "Reference",
    "SVDDNet",
    "Teacher",
    "VAEConfig",
    "_DistanceTeacher",
    "_masked_knn",
    "build_teacher",
    "check_kind",
    "count_parameters",
    "register_kind",
    "score_logits",
    "teacher_kinds",
]
