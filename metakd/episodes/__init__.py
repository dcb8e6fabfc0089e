"""Few-shot episodes: support, query and unlabelled pool rows drawn from tasks, batched.

An episode of a task holds

* a support set of ``K`` normal (and optionally ``A`` labelled anomalous) rows to adapt on,
* a labelled query set of ``Q`` rows to evaluate the adapted model on (the outer loss),
* optionally an unlabelled pool of ``P`` rows with the task's natural contamination.

The three never share a row. Features are scaled with statistics of the support and pool rows
only (the query stays unseen), then aligned to a common width, so episodes of tasks with
different feature counts stack into one ``[B, ...]`` tensor ready for ``torch.func.vmap``.

The package, by role: :mod:`.shape` (the episode shape and whether a task can serve it),
:mod:`.batch` (an episode's drawn rows and a batch of episodes as tensors) and :mod:`.sampler`
(drawing episodes from tasks and computing their features, batched).
"""

from metakd.episodes.batch import EpisodeBatch, EpisodePlan
from metakd.episodes.sampler import EpisodeSampler
from metakd.episodes.shape import EpisodeConfig, episode_shortfall, round_half_up

__all__ = [
    "EpisodeBatch",
    "EpisodeConfig",
    "EpisodePlan",
    "EpisodeSampler",
    "episode_shortfall",
    "round_half_up",
]
