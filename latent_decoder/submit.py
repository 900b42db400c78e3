"""``latent-decoder submit``: run a whole decode as a Ray Job on a remote cluster.

The job's entrypoint is ``python -m latent_decoder.job EXP ...`` (decode with ``--address auto``);
the runtime env ships this package (``py_modules``) so the cluster runs the same code as the
submitter, merged with an optional runtime-env YAML (``jobs/runtime_env.yaml``).

Waiting follows the job's log over the dashboard's tail stream (each line sent once while the
connection holds) rather than downloading the whole log again every second. A dropped connection
is retried with backoff; a new stream replays the log from its start, so what was shown is skipped.
"""
from __future__ import annotations

import asyncio
import logging
import shlex
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ClusterError, SetupError, first_line

log = logging.getLogger(__name__)

GIVE_UP_S = 300.0      # the dashboard unreachable this long while following a job: stop with a ClusterError
BACKOFF_MIN_S = 0.5    # first wait before reconnecting; doubles on every failure in a row ...
BACKOFF_MAX_S = 10.0   # ... up to this
SUBMIT_RETRY_S = 60.0  # how long to retry a submission the head asks to "try again later" (no job agent yet)
QUIET_S = 30.0         # no log output this long: ask for the job's status (a dead connection can hang silently)


def job_args(args: list[str]) -> list[str]:
    """The decode command line a job runs for ``args``: ``--address auto`` added unless one is given,
    so the job's driver joins the job's own cluster."""
    joins = any(a == "--address" or a.startswith("--address=") for a in args)
    return ["decode", *args] if joins else ["decode", *args, "--address", "auto"]


def load_runtime_env(path: Path | None) -> dict[str, Any]:
    """The package itself, plus what ``path`` (a runtime-env YAML) adds."""
    env: dict[str, Any] = {}
    if path is not None:
        try:
            env = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SetupError(f"cannot read runtime env {path}: {first_line(exc)}") from exc
        if not isinstance(env, dict):
            raise SetupError(f"runtime env {path} must hold a mapping, found {type(env).__name__}")
    package = str(Path(__file__).resolve().parent)
    env["py_modules"] = [*env.get("py_modules", []), package]
    return env


def entrypoint(experiment: str, decode_args: list[str]) -> str:
    """The job's command line: the cluster's ``python`` running decode with ``--address auto``."""
    return shlex.join(["python", "-m", "latent_decoder.job", *job_args([experiment, *decode_args])[1:]])


def submit(experiment: str, decode_args: list[str], address: str, runtime_env: dict[str, Any], wait: bool,
           echo: Callable[[str], None]) -> int:
    """Submit the job; with ``wait``, stream its logs and return the job's exit status."""
    try:
        from ray.exceptions import RayError
        from ray.job_submission import JobStatus, JobSubmissionClient
    except ImportError as exc:
        raise ClusterError(f"submit needs Ray's job client ({first_line(exc)}): "
                           "pip install 'ray[default]>=2.60,<3'") from exc
    deadline, delay = time.monotonic() + SUBMIT_RETRY_S, BACKOFF_MIN_S
    while True:
        try:
            client = JobSubmissionClient(address)
            job_id = client.submit_job(entrypoint=entrypoint(experiment, decode_args), runtime_env=runtime_env)
            break
        except (OSError, RuntimeError, ValueError, RayError) as exc:  # OSError: requests' connection errors
            # A fresh head answers before its job agent is up ("No available agent ..., please try again
            # later"): no job was created, so trying again is safe.
            if "try again later" not in str(exc) or time.monotonic() >= deadline:
                raise ClusterError(f"cannot submit to {address}: {first_line(exc)}") from exc
            log.info("%s: %s; trying again", address, first_line(exc))
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
    echo(f"submitted job {job_id} to {address}")
    if not wait:
        return 0
    # Ray's client logs every normal end of the stream ("WebSocket closed ... code 1000") at INFO; what
    # matters of a drop is said here, once.
    sdk_log = logging.getLogger("ray.dashboard.modules.job.sdk")
    sdk_level = sdk_log.level
    sdk_log.setLevel(max(sdk_level, logging.WARNING))
    try:
        info = asyncio.run(_follow(client, job_id, address, echo))
    except KeyboardInterrupt:
        echo(f"stopped following job {job_id}; it keeps running (ray job stop {job_id} --address {address})")
        return 130
    finally:
        sdk_log.setLevel(sdk_level)
    status = info.status
    echo(f"job {job_id} {status.value.lower()}")
    if status == JobStatus.SUCCEEDED:
        return 0
    return info.driver_exit_code if info.driver_exit_code else 1


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the dashboard is out of reach for now (retry), rather than that the request is
    wrong (unknown job, bad token: retrying cannot help)."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - ray[default] brings it
        aiohttp = None
    if aiohttp is not None and isinstance(exc, aiohttp.ClientResponseError):  # an HTTP answer, e.g. ws handshake
        return exc.status >= 500 or exc.status in (408, 429)
    # ConnectionError, requests' errors (IOError) and aiohttp's connection errors are all OSError
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)):
        return True
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):  # server disconnected, payload cut
        return True
    if isinstance(exc, RuntimeError):  # the job client's: "WebSocket connection closed unexpectedly", "... code 503"
        text = str(exc).lower()
        return any(word in text for word in ("connect", "websocket", "closed", "timed out", "timeout",
                                             "status code 5"))
    return False


class _Outage:
    """How long the dashboard has been out of reach; waits with backoff between tries and gives up after
    ``GIVE_UP_S``, so a dead cluster ends ``submit`` with one line instead of a hang or a traceback."""

    def __init__(self, address: str, job_id: str) -> None:
        self.address, self.job_id = address, job_id
        self.since: float | None = None
        self.delay = BACKOFF_MIN_S

    def ok(self) -> None:
        if self.since is not None:
            log.info("reconnected to %s", self.address)
        self.since, self.delay = None, BACKOFF_MIN_S

    async def failed(self, exc: BaseException) -> None:
        """Wait before the next try, or raise ``ClusterError`` when ``exc`` is not transient or time is up."""
        if not _transient(exc):
            raise ClusterError(f"lost job {self.job_id} at {self.address}: {first_line(exc)}") from exc
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("lost the connection to %s (%s); reconnecting for up to %g s",
                        self.address, first_line(exc), GIVE_UP_S)
        left = self.since + GIVE_UP_S - now
        if left <= 0:
            raise ClusterError(
                f"cannot reach the Ray dashboard at {self.address} for {GIVE_UP_S:g} s while following job "
                f"{self.job_id} ({first_line(exc)}); the job may still be running: "
                f"ray job status {self.job_id} --address {self.address}") from exc
        log.debug("%s unreachable (%s); next try in %.1f s", self.address, first_line(exc), min(self.delay, left))
        await asyncio.sleep(min(self.delay, left))
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)


class _LogEcho:
    """Echoes the job's log a line at a time, each character once, across streams that each replay the
    log from its start."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.received = 0  # characters of the log taken in (echoed, or waiting in ``partial``)
        self.partial = ""  # an unfinished last line, echoed once its newline comes (or at the end)

    def feed(self, chunk: str, pos: int) -> int:
        """Take ``chunk``, found at ``pos`` in the current stream; returns the stream position after it."""
        end = pos + len(chunk)
        if end > self.received:
            text = self.partial + chunk[max(self.received - pos, 0):]
            self.received = end
            lines, newline, self.partial = text.rpartition("\n")
            if newline:
                self.echo(lines)
        return end

    def flush(self) -> None:
        if self.partial:
            self.echo(self.partial)
            self.partial = ""


async def _job_info(client: Any, job_id: str, outage: _Outage) -> Any:
    """``get_job_info``, retried while the dashboard is out of reach (in a thread: it blocks on HTTP)."""
    while True:
        try:
            info = await asyncio.to_thread(client.get_job_info, job_id)
        except Exception as exc:  # noqa: BLE001 - _Outage.failed re-raises what is not transient
            await outage.failed(exc)
            continue
        outage.ok()
        return info


async def _tail(client: Any, job_id: str, out: _LogEcho, outage: _Outage) -> bool:
    """Follow one log stream; True when the server ended it, False when it was dropped as stalled (the job
    finished but nothing came for ``QUIET_S`` twice). Connection errors propagate."""
    stream = client.tail_job_logs(job_id)
    pos = 0
    finished_seen = False
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(stream.__anext__())
            while not (await asyncio.wait({pending}, timeout=QUIET_S))[0]:
                if (await _job_info(client, job_id, outage)).status.is_terminal():
                    if finished_seen:
                        return False
                    finished_seen = True
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return True
            outage.ok()
            pos = out.feed(chunk, pos)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # retrieved, so asyncio does not report it as lost
        try:
            await stream.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


async def _follow(client: Any, job_id: str, address: str, echo: Callable[[str], None]) -> Any:
    """Echo the job's log until the job ends, reconnecting through transient errors; the job's final info."""
    out, outage = _LogEcho(echo), _Outage(address, job_id)
    reopen = BACKOFF_MIN_S
    try:
        while True:
            received = out.received
            try:
                ended = await _tail(client, job_id, out, outage)
            except ClusterError:
                raise
            except Exception as exc:  # noqa: BLE001 - _Outage.failed re-raises what is not transient
                await outage.failed(exc)
                continue
            info = await _job_info(client, job_id, outage)
            if info.status.is_terminal() and ended:
                return info
            # The stream stalled after the job ended, or the server closed it while the job runs (its log
            # agent restarted): open it again, no faster than backoff allows while it brings nothing new.
            reopen = BACKOFF_MIN_S if out.received > received else min(reopen * 2, BACKOFF_MAX_S)
            await asyncio.sleep(reopen)
    finally:
        out.flush()
