"""``latent-decoder submit``: run a whole decode as a Ray Job on a remote cluster.

The job's entrypoint is ``python -m latent_decoder.job EXP ...`` (decode with ``--address auto``);
the runtime env ships this package (``py_modules``) so the cluster runs the same code as the
submitter, merged with an optional runtime-env YAML (``jobs/runtime_env.yaml``).
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ClusterError, SetupError, first_line
from .job import job_args

POLL_S = 1.0


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
        from ray.job_submission import JobStatus, JobSubmissionClient
    except ImportError as exc:
        raise ClusterError("submit needs Ray's job client: pip install 'latent-decoder[ray]'") from exc
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=entrypoint(experiment, decode_args), runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot submit to {address}: {first_line(exc)}") from exc
    echo(f"submitted job {job_id} to {address}")
    if not wait:
        return 0
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status.is_terminal():
            break
        time.sleep(POLL_S)
    info = client.get_job_info(job_id)
    echo(f"job {job_id} {status.value.lower()}")
    if status == JobStatus.SUCCEEDED:
        return 0
    return info.driver_exit_code if info.driver_exit_code else 1
