"""Run tracking: ``metrics.jsonl`` always, Weights & Biases when enabled.

W&B is imported only when tracking is on, never prompts and never needs the network: the default
mode is ``offline`` unless the user configured W&B (``WANDB_MODE`` or an API key). Offline runs
sync later with ``wandb sync``. W&B's own ``WANDB_PROJECT``, ``WANDB_ENTITY`` and ``WANDB_DIR``
apply unless the config sets the project or entity.

W&B is the ``tracking`` extra: without it the default mode tracks in ``metrics.jsonl`` alone
(said once per process), and ``online`` or ``offline`` asked for explicitly is an error naming
the command that installs it.
"""

from __future__ import annotations

import hashlib
import json
import math
import netrc
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

from metakd.errors import ConfigError
from metakd.extras import MissingExtra, install_hint, is_installed, missing_message, note_once

# Re-exported: the jobs import the progress display from here.
from metakd.progress import progress_bar as progress_bar

TrackingMode = Literal["auto", "online", "offline", "disabled"]
ConcreteMode = Literal["online", "offline", "disabled"]
_CONCRETE_MODES: dict[str, ConcreteMode] = {
    "online": "online",
    "offline": "offline",
    "disabled": "disabled",
}


@dataclass
class TrackingConfig:
    """Where and how a run is tracked."""

    mode: TrackingMode = "auto"
    """``auto``: ``WANDB_MODE`` if set, else ``online`` when an API key is configured, else
    ``offline``. ``disabled`` writes no W&B files."""
    project: str | None = None
    """W&B project; null uses ``WANDB_PROJECT`` if set, else ``metakd``."""
    entity: str | None = None
    """W&B entity (user or team); null uses ``WANDB_ENTITY`` if set, else the account default."""
    group: str | None = None
    """W&B run group (e.g. one sweep or experiment)."""
    tags: list[str] = field(default_factory=list)
    """W&B run tags."""
    name: str | None = None
    """W&B run name; null lets W&B choose."""


def resolve_mode(mode: TrackingMode) -> ConcreteMode:
    """The concrete W&B mode for ``mode`` in the current environment."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in _CONCRETE_MODES:
        return _CONCRETE_MODES[env]
    if env == "dryrun":
        return "offline"
    return "online" if has_credentials() else "offline"


#: The project of runs when neither the config nor ``WANDB_PROJECT`` names one.
DEFAULT_PROJECT = "metakd"


def has_credentials() -> bool:
    """Whether W&B has credentials here, found as wandb finds them but without the network:
    ``WANDB_API_KEY`` (or ``WANDB_IDENTITY_TOKEN_FILE``), a netrc entry for the W&B host
    (``wandb login`` writes one), or an ``api_key`` in W&B's global settings file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    env_netrc = os.environ.get("NETRC")
    candidates = (
        [Path(env_netrc)] if env_netrc else [Path.home() / ".netrc", Path.home() / "_netrc"]
    )
    for path in candidates:
        if path.is_file():
            try:
                if netrc.netrc(str(path)).authenticators(host):
                    return True
            except (netrc.NetrcParseError, OSError):
                pass
            break  # wandb reads only the first netrc file that exists
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or str(Path.home() / ".config" / "wandb")
    settings = Path(config_dir) / "settings"
    if settings.is_file():
        text = settings.read_text(errors="ignore")
        if any(line.strip().startswith("api_key") for line in text.splitlines()):
            return True
    return False


def _check_credentials() -> None:
    if not has_credentials():
        raise ConfigError(
            "W&B tracking is online but no W&B login was found: run `wandb login`, set "
            "WANDB_API_KEY, or use --tracking offline (sync later with `wandb sync`)"
        )


# What wandb itself accepts in WANDB_MODE; it refuses anything else with a traceback.
_WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def _check_wandb_env() -> None:
    value = os.environ.get("WANDB_MODE")
    if value is not None and value not in _WANDB_ENV_MODES:
        raise ConfigError(
            f"environment variable WANDB_MODE={value!r} is not a W&B mode; set it to one of "
            f"{', '.join(_WANDB_ENV_MODES)} or unset it"
        )


def _note_without_wandb() -> None:
    """Say, once per process, that the default tracking mode runs without W&B here."""
    note_once(
        "wandb",
        "wandb is not installed, so runs are tracked in metrics.jsonl only (W&B: "
        f"{install_hint('tracking')}; --tracking disabled or tracking.mode=disabled skips "
        "this note)",
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """JSON-safe scalar (tensors and numpy numbers become floats; NaN becomes null)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _WandbWorker:
    """The one thread that talks to W&B: it starts the run, then makes the calls it is handed,
    in order. The job's own thread only enqueues: W&B's start (an import and a service
    process, 1-2 s) overlaps the job's set-up, and no training step waits for a log call.

    A failure inside W&B is kept, later calls are dropped, and the error is raised by the job's
    next call (or :meth:`close`), so it ends the job with an error rather than being lost.
    """

    def __init__(self, start: Callable[[], Any]) -> None:
        # (call, whether it runs even after a failure)
        self._calls: queue.Queue[tuple[Callable[[Any], None], bool] | None] = queue.Queue()
        self._ready = threading.Event()
        self.run: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, args=(start,), name="metakd-wandb", daemon=True
        )
        self._thread.start()

    def _serve(self, start: Callable[[], Any]) -> None:
        try:
            self.run = start()
        except BaseException as err:  # raised by the job's next call
            self.error = err
        finally:
            self._ready.set()
        while (entry := self._calls.get()) is not None:
            call, always = entry
            if self.error is None or always:
                try:
                    call(self.run)
                except BaseException as err:
                    self.error = self.error or err

    def started(self) -> Any:
        """The W&B run, once started (waits for it)."""
        self._ready.wait()
        self._raise()
        return self.run

    def submit(self, call: Callable[[Any], None]) -> None:
        """Run ``call(wandb_run)`` on the W&B thread, after every call before it."""
        self._raise()
        self._calls.put((call, False))

    def wait(self) -> None:
        """Return once every call submitted so far has been made (raising W&B's failure)."""
        done = threading.Event()
        self._calls.put((lambda run: done.set(), True))
        done.wait()
        self._raise()

    def close(self, final: Callable[[Any], None]) -> None:
        """Make ``final(wandb_run)`` after every other call (even after a failure, if W&B's run
        started), stop the thread, then raise W&B's failure, if any."""
        self._calls.put((lambda run: None if run is None else final(run), True))
        self._calls.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class Run:
    """One tracked job (meta-train, adapt or evaluate) writing into ``out_dir``.

    ``metrics.jsonl`` is written by the calling thread as each call is made; W&B's side runs on
    a thread of its own (:class:`_WandbWorker`), so tracking costs a training step only the
    JSON line.

    Args:
        out_dir: the run directory; ``metrics.jsonl`` (and W&B's ``wandb/`` folder, unless
            ``WANDB_DIR`` names another place) go here.
        config: the resolved config as plain data.
        tracking: tracking settings.
        job_type: W&B job type, e.g. ``meta-train``.
        history: ``metrics.jsonl`` lines of an interrupted run this one resumes, written first
            (not sent to W&B again).
        resume_id: the W&B run id of that run, continued rather than started anew.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        config: dict[str, Any],
        tracking: TrackingConfig,
        job_type: str,
        history: Sequence[str] = (),
        resume_id: str | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.mode = resolve_mode(tracking.mode)
        if self.mode != "disabled" and not is_installed("wandb"):
            if tracking.mode != "auto":
                raise MissingExtra(
                    missing_message(["wandb"], f"W&B tracking (tracking.mode={tracking.mode})")
                )
            self.mode = "disabled"  # the default mode: metrics.jsonl alone, said once
            _note_without_wandb()
        if self.mode != "disabled":
            _check_wandb_env()
        if self.mode == "online":
            _check_credentials()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out_dir / "metrics.jsonl"
        self._metrics = self.metrics_path.open("w")
        self.lines: list[str] = list(history)
        """Every metrics line logged so far (the resumed run's first), JSON without newline."""
        if self.lines:
            self._metrics.write("".join(line + "\n" for line in self.lines))
            self._metrics.flush()
        self._wandb: _WandbWorker | None = None
        if self.mode != "disabled":
            wandb_dir = Path(os.environ.get("WANDB_DIR") or out_dir)
            wandb_dir.mkdir(parents=True, exist_ok=True)
            # W&B's own variables apply where the config sets nothing. They are read here, at
            # each run, rather than left to wandb, whose process-wide settings keep the values
            # it first saw.
            project = tracking.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
            entity = tracking.entity or os.environ.get("WANDB_ENTITY") or None
            mode = self.mode

            def start() -> Any:
                import wandb  # lazy: W&B costs start-up time and is only needed when tracking

                return wandb.init(
                    project=project,
                    entity=entity,
                    group=tracking.group,
                    tags=list(tracking.tags),
                    name=tracking.name,
                    config=config,
                    dir=str(wandb_dir),
                    mode=mode,
                    job_type=job_type,
                    settings=wandb.Settings(silent=True, console="off"),
                    id=resume_id,
                    resume="allow" if resume_id is not None else None,
                )

            self._wandb = _WandbWorker(start)

    @property
    def wandb_run(self) -> Any:
        """The W&B run (``None`` when W&B is off); waits until W&B has started it."""
        return None if self._wandb is None else self._wandb.started()

    @property
    def wandb_id(self) -> str | None:
        """The W&B run id (``None`` when W&B is off)."""
        run = self.wandb_run
        return None if run is None else str(run.id)

    def log(self, metrics: dict[str, Any], *, step: int) -> None:
        """Log scalar metrics at ``step`` to ``metrics.jsonl`` and W&B."""
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        line = json.dumps(record)
        self.lines.append(line)
        self._metrics.write(line + "\n")
        self._metrics.flush()
        if self._wandb is not None:
            values = {k: v for k, v in record.items() if k != "step"}
            self._wandb.submit(lambda run: run.log(values, step=step))

    def summary(self, metrics: dict[str, Any]) -> None:
        """Record final metrics (W&B run summary; a ``summary`` line in ``metrics.jsonl``)."""
        plain = {k: _plain(v) for k, v in metrics.items()}
        self._metrics.write(json.dumps({"summary": plain}) + "\n")
        self._metrics.flush()
        if self._wandb is not None:
            self._wandb.submit(lambda run: run.summary.update(plain))

    def log_artifact(
        self,
        path: Path,
        *,
        name: str,
        type: str,
        aliases: list[str],
        metadata: dict[str, Any] | None = None,
        uses: list[tuple[str, Path]] | None = None,
    ) -> None:
        """Log ``path`` as a W&B Artifact (no-op when disabled).

        ``uses`` lists ``(artifact name, file)`` pairs this one was made from. Online, each is
        declared an input of the run, so W&B draws the lineage graph; W&B forbids
        ``use_artifact`` offline, so the name and SHA-256 of each source file are also recorded
        in the artifact's metadata (``sources``), which identifies the exact source artifact.
        The file is read before this returns: it may change afterwards.
        """
        if self._wandb is None:
            return
        metadata = dict(metadata or {})
        if uses:
            metadata["sources"] = [
                {"artifact": source_name, "file": source_path.name, "sha256": _sha256(source_path)}
                for source_name, source_path in uses
            ]
        online = self.mode == "online"

        def log(run: Any) -> None:
            import wandb

            if online and uses:
                for source_name, source_path in uses:
                    source = wandb.Artifact(source_name, type=type)
                    source.add_file(str(source_path))
                    run.use_artifact(source)
            artifact = wandb.Artifact(name, type=type, metadata=metadata)
            artifact.add_file(str(path))
            run.log_artifact(artifact, aliases=aliases)

        self._wandb.submit(log)
        self._wandb.wait()  # W&B has read the file before it may change

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a ``wandb.Table`` (no-op when disabled)."""
        if self._wandb is None:
            return
        header: list[str | int] = list(columns)  # wandb's column keys are ``str | int``

        def log(run: Any) -> None:
            import wandb

            run.log({key: wandb.Table(columns=header, data=rows)})

        self._wandb.submit(log)

    def log_image(self, key: str, path: Path) -> None:
        """Log an image file (no-op when disabled)."""
        if self._wandb is None:
            return

        def log(run: Any) -> None:
            import wandb

            run.log({key: wandb.Image(str(path))})

        self._wandb.submit(log)
        self._wandb.wait()  # W&B has read the file before it may change

    def finish(self, *, error: BaseException | None = None) -> None:
        """Close ``metrics.jsonl`` and the W&B run (after every call to W&B was made).

        With ``error`` (the exception ending the run), ``metrics.jsonl`` ends with a
        ``{"status": "failed", "error": TYPE}`` line (``interrupted`` for ``KeyboardInterrupt``)
        and the W&B run is finished with a non-zero exit code, so it is not marked finished.
        """
        exit_code = 0
        if error is not None:
            interrupted = isinstance(error, KeyboardInterrupt)
            status = "interrupted" if interrupted else "failed"
            exit_code = 130 if interrupted else 1
            if not self._metrics.closed:
                self._metrics.write(
                    json.dumps({"status": status, "error": type(error).__name__}) + "\n"
                )
        self._metrics.close()
        if self._wandb is not None:
            worker, self._wandb = self._wandb, None
            worker.close(lambda run: run.finish(exit_code=exit_code))

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            exc = None  # a clean exit is a success
        self.finish(error=exc)
