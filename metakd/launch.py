"""``metakd meta-train``'s process glue: torch.distributed ranks, resume and the run folder.

One process, or every rank of a torchrun job, calls :func:`launch_meta_train`. Rank 0 resolves
what to run (the config; with ``--resume`` the checkpoint to continue) and works in the staged
run folder (:mod:`metakd.rundir`); it hands the same config and resume state to the other ranks,
which write nothing. Whatever fails on rank 0 before training starts reaches the other ranks as
an error, so none waits for a job that will not come.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from metakd import configio
from metakd.config import TrainConfig, load_train_config
from metakd.detect.pool_share import pool_share_fitter
from metakd.distributed import DEFAULT_TIMEOUT, launch_from_env, process_group
from metakd.errors import ConfigError
from metakd.inputs import collection_inputs, real_path
from metakd.resume import RESUME_FILE, ResumeState
from metakd.rundir import resume_source, staged_run_dir
from metakd.train import TrainingInterrupted, TrainResult, meta_train, resolve_streams


def resumed_config(
    state: ResumeState, config_path: str | None, overrides: list[str]
) -> TrainConfig:
    """The config of a resumed run: the interrupted run's with ``overrides`` on top, or (with
    ``config_path``) that file's; :meth:`~metakd.resume.ResumeState.check_config` then says
    whether it may resume."""
    if config_path is not None:
        return load_train_config(config_path, overrides)
    return configio.from_dict(TrainConfig, configio.merge_overrides(state.config, overrides))


def launch_meta_train(
    config_path: str | None,
    overrides: list[str],
    out: Path,
    *,
    progress: bool,
    overwrite: bool,
    resume: bool,
    dist_timeout: float = DEFAULT_TIMEOUT,
) -> tuple[TrainConfig, TrainResult] | None:
    """Meta-train into the run folder ``out`` as this process's part of the job.

    Args:
        config_path, overrides: the config (``--config``, ``--set``); with ``resume`` they
            default to the interrupted run's.
        out: the run folder (``--out``, or the ``--resume`` path).
        progress: show a progress bar (rank 0).
        overwrite: replace a finished run at ``out``; a fresh run also discards an
            interrupted one.
        resume: continue the newest resume checkpoint of ``out``
            (:func:`metakd.rundir.resume_source`).
        dist_timeout: seconds a rank waits for the others in a collective.

    Returns:
        ``(config, result)`` on rank 0 (or a single process); ``None`` on the other ranks.

    Raises:
        TrainingInterrupted: on rank 0, SIGINT/SIGTERM stopped the run (the other ranks exit
            with the signal's status and no message).
    """
    launch = launch_from_env()
    config: TrainConfig | None = None
    if not resume:
        config = load_train_config(config_path, overrides)
        # Every rank fails alike before any rendezvous: no rank waits for peers that left.
        resolve_streams(config, 1 if launch is None else launch.world_size)
    with process_group(launch, timeout=dist_timeout) as group:
        if group is not None and not group.is_writer:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # rank 0 shows the same ones
                shared_config, state = group.share()
                try:
                    meta_train(
                        configio.from_dict(TrainConfig, shared_config),
                        out_dir=None,
                        progress=False,
                        resume=state,
                        group=group,
                    )
                except TrainingInterrupted as stop:
                    raise SystemExit(stop.exit_code) from None  # rank 0 says how to resume
            return None
        with contextlib.ExitStack() as stack:
            try:
                source = resume_source(out) if resume else None
                state = None if source is None else ResumeState.load(source / RESUME_FILE)
                if state is not None:
                    config = resumed_config(state, config_path, overrides)
                assert config is not None
                if (
                    resume
                    and config_path is not None
                    and real_path(config_path).is_relative_to(real_path(out))
                ):
                    raise ConfigError(
                        f"--config {config_path} is inside {out}, which the resumed run "
                        "replaces; without --config it continues with that run's own config (to "
                        "change iterations, checkpoint_every or tracking.*, copy the file "
                        "elsewhere or use --set)"
                    )
                # What this run reads: --out may neither be nor hold it (the checkpoint it
                # resumes is the one exception: that run is meant to end in --out).
                inputs = [("--config", config_path), *collection_inputs("--tasks", config.tasks)]
                stage = stack.enter_context(
                    staged_run_dir(
                        out,
                        command="meta-train",
                        overwrite=overwrite,
                        resume_from=source,
                        inputs=inputs,
                    )
                )
            except BaseException as err:
                if group is not None:
                    group.share(error=err)
                raise
            if group is not None:
                group.share((configio.to_dict(config), state))
            result = meta_train(
                config,
                out_dir=stage,
                progress=progress,
                resume=state,
                group=group,
                fit_pool_share=pool_share_fitter(config, progress=progress),
            )
        return config, result
