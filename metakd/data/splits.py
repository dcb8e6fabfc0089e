"""The split of a collection's *tasks* (never of rows) into meta-train, validation and test."""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metakd.errors import ConfigError, DataError, check_number, check_seed

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class SplitConfig:
    """How tasks are divided into meta-train / validation / test.

    Attributes:
        seed: Seed of the shuffle behind the fraction split.
        val: Fraction of tasks for validation (at least one when positive): the best
            meta-training iterate is chosen on them.
        test: Fraction of tasks held out for meta-train's closing report (and ``metakd
            evaluate``'s default tasks). 0 by default: a user's folder or manifest is
            meta-trained on every domain but the validation ones; set it to hold some out
            (the report names them). The built-in collections keep their own held-out tasks.
        train_tasks: Task names or globs for meta-train. Explicit lists replace the fractions:
            each list takes its matching tasks, the remaining tasks go to train when
            ``train_tasks`` is not given and are an error otherwise.
        val_tasks: Task names or globs for validation.
        test_tasks: Task names or globs for test.
    """

    seed: int = 0
    val: float = 0.2
    test: float = 0.0
    train_tasks: list[str] | None = None
    val_tasks: list[str] | None = None
    test_tasks: list[str] | None = None

    def __post_init__(self) -> None:
        check_seed("split.seed", self.seed)
        for key in ("val", "test"):
            check_number(f"split.{key}", getattr(self, key), low=0, high=1, high_open=True)
        if self.val + self.test >= 1:
            raise ConfigError(
                f"split.val + split.test must be below 1 (got {self.val} + {self.test}): "
                "meta-training needs tasks"
            )

    @property
    def explicit(self) -> bool:
        """Whether task lists, not fractions, define the split."""
        return any(
            patterns is not None for patterns in (self.train_tasks, self.val_tasks, self.test_tasks)
        )


def split_tasks(names: Sequence[str], config: SplitConfig, *, where: str) -> dict[str, list[str]]:
    """Divide task names into train/val/test.

    By fractions: the naturally sorted names are shuffled with ``default_rng(config.seed)``;
    the first ``round(test * n)`` go to test, the next ``round(val * n)`` to val (each at least
    one when its fraction is positive), the rest to train. With fewer than 3 tasks all go to
    train, with a warning. Explicit lists: see :class:`SplitConfig`.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each in natural order.
    """
    ordered = sorted(names, key=natural_key)
    if config.explicit:
        splits = _explicit_split(ordered, config, where=where)
    elif len(ordered) < 3:
        if config.val > 0 or config.test > 0:
            warnings.warn(
                f"{where}: only {len(ordered)} task(s), all used for meta-training (no val/test)",
                stacklevel=2,
            )
        splits = {"train": list(ordered), "val": [], "test": []}
    else:
        n = len(ordered)
        n_test = _split_count(config.test, n)
        n_val = _split_count(config.val, n)
        if n_test + n_val >= n:
            raise DataError(
                where,
                f"split.val = {config.val} and split.test = {config.test} leave no meta-training "
                f"task out of {n}",
            )
        shuffled = [ordered[i] for i in np.random.default_rng(config.seed).permutation(n)]
        splits = {
            "test": shuffled[:n_test],
            "val": shuffled[n_test : n_test + n_val],
            "train": shuffled[n_test + n_val :],
        }
    if not splits["train"]:
        raise DataError(where, "no task is assigned to the train split")
    return {key: sorted(splits[key], key=natural_key) for key in SPLITS}


def natural_key(text: str) -> list[int | str]:
    """Sort key ordering embedded numbers numerically: ``2_x`` before ``10_x``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _explicit_split(
    names: Sequence[str], config: SplitConfig, *, where: str
) -> dict[str, list[str]]:
    lists = {"train": config.train_tasks, "val": config.val_tasks, "test": config.test_tasks}
    owner: dict[str, str] = {}
    splits: dict[str, list[str]] = {key: [] for key in SPLITS}
    for key, patterns in lists.items():
        for pattern in patterns or []:
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise DataError(where, f"split.{key}_tasks: '{pattern}' matches no task")
            for n in matched:
                if owner.get(n, key) != key:
                    raise DataError(
                        where,
                        f"task '{n}' is listed in both split.{owner[n]}_tasks and "
                        f"split.{key}_tasks",
                    )
                if n not in owner:
                    owner[n] = key
                    splits[key].append(n)
    rest = [n for n in names if n not in owner]
    if rest and config.train_tasks is not None:
        raise DataError(
            where,
            f"tasks in no split list: {', '.join(rest)}; list them or drop split.train_tasks "
            "so the rest go to train",
        )
    splits["train"].extend(rest)
    return splits


def _split_count(fraction: float, n: int) -> int:
    if fraction == 0:
        return 0
    return max(1, int(np.floor(fraction * n + 0.5)))
