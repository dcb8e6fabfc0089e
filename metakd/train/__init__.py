"""Meta-training: the entry point (:mod:`.run`), the loop (:mod:`.loop`, a :class:`MetaTrainer`), where its episodes come from
(:mod:`.streams`), its measurements (:mod:`.references`), the teacher it writes (:mod:`.files`) and clean stops
(:mod:`.signals`). The math of a meta-batch is :mod:`metakd.meta.learners`'."""

from metakd.train.files import init_learner, write_teacher
from metakd.train.loop import MetaTrainer, TrainResult
from metakd.train.references import few_shot_auroc, held_out_report, knn_auroc
from metakd.train.run import meta_train
from metakd.train.signals import StopSignals, TrainingInterrupted
from metakd.train.streams import (
    EpisodeStreams,
    fixed_episodes,
    held_out,
    resolve_streams,
    stack_episodes,
)

__all__ = [
    "EpisodeStreams",
    "MetaTrainer",
    "StopSignals",
    "TrainResult",
    "TrainingInterrupted",
    "few_shot_auroc",
    "held_out_report",
    "init_learner",
    "fixed_episodes",
    "held_out",
    "knn_auroc",
    "meta_train",
    "resolve_streams",
    "stack_episodes",
    "write_teacher",
]
