"""``latent-decoder submit`` follows the job's log over Ray's tail stream and rides out a flaky dashboard:
a fake job client (no cluster) drops the stream, replays it, stalls it or stays unreachable."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

job_submission = pytest.importorskip("ray.job_submission")
aiohttp = pytest.importorskip("aiohttp")
requests = pytest.importorskip("requests")

from latent_decoder import submit as submit_module  # noqa: E402
from latent_decoder.cli import cli  # noqa: E402

JobStatus = job_submission.JobStatus
ADDRESS = "http://head:8265"
JOB_ID = "raysubmit_test"
# Chunk edges fall inside lines, as the server's 20000-character chunks may; the log ends without a newline.
CHUNKS = ["starting decode\nitem 1 of 2 do", "ne\nitem 2 of 2 done\n", "\nfinished: decoded 2 item(s)\n",
          "last words"]
LINES = ["starting decode", "item 1 of 2 done", "item 2 of 2 done", "", "finished: decoded 2 item(s)", "last words"]


class FakeJobClient:
    """``JobSubmissionClient``'s calls that ``submit`` makes. ``tail_plan[i]`` scripts the i-th stream:
    ``None`` replays the whole log and ends; ``(n, exc)`` sends ``n`` chunks then raises ``exc`` (``exc``
    None: then sends nothing more and never ends, a stalled connection). ``info_errors`` are raised by
    ``get_job_info`` first."""

    def __init__(self, tail_plan: list, info_errors: list[BaseException] = (), status: JobStatus = JobStatus.SUCCEEDED,
                 exit_code: int | None = 0, submit_errors: list[BaseException] = ()) -> None:
        self.tail_plan, self.info_errors, self.submit_errors = list(tail_plan), list(info_errors), list(submit_errors)
        self.status, self.exit_code = status, exit_code
        self.tails = self.info_calls = self.log_downloads = 0

    def submit_job(self, *, entrypoint: str, runtime_env: dict) -> str:
        if self.submit_errors:
            raise self.submit_errors.pop(0)
        self.entrypoint = entrypoint
        return JOB_ID

    async def tail_job_logs(self, job_id: str):
        assert job_id == JOB_ID
        plan = self.tail_plan[self.tails] if self.tails < len(self.tail_plan) else None
        self.tails += 1
        for i, chunk in enumerate(CHUNKS):
            if plan is not None and i == plan[0]:
                if plan[1] is None:
                    await asyncio.Event().wait()
                raise plan[1]
            await asyncio.sleep(0)
            yield chunk

    def get_job_info(self, job_id: str) -> SimpleNamespace:
        self.info_calls += 1
        if self.info_errors:
            raise self.info_errors.pop(0)
        return SimpleNamespace(status=self.status, driver_exit_code=self.exit_code, message="")

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.get_job_info(job_id).status

    def get_job_logs(self, job_id: str) -> str:
        self.log_downloads += 1
        return "".join(CHUNKS)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    """Backoff and give-up times of a few hundredths of a second instead of seconds and minutes."""
    monkeypatch.setattr(submit_module, "BACKOFF_MIN_S", 0.01)
    monkeypatch.setattr(submit_module, "BACKOFF_MAX_S", 0.05)
    monkeypatch.setattr(submit_module, "GIVE_UP_S", 0.5)
    monkeypatch.setattr(submit_module, "QUIET_S", 0.05)
    monkeypatch.setattr(submit_module, "SUBMIT_RETRY_S", 0.5)


def handshake_error(status: int, message: str) -> Exception:
    """What ``ws_connect`` raises when the server answers the websocket handshake with an HTTP error."""
    import multidict
    import yarl

    url = yarl.URL(f"{ADDRESS}/api/jobs/{JOB_ID}/logs/tail")
    info = aiohttp.RequestInfo(url, "GET", multidict.CIMultiDictProxy(multidict.CIMultiDict()), url)
    return aiohttp.WSServerHandshakeError(info, (), status=status, message=message)


def run_submit(monkeypatch, client: FakeJobClient):
    monkeypatch.setattr(job_submission, "JobSubmissionClient", lambda address, **kwargs: client)
    return CliRunner().invoke(cli, ["submit", "/data/EXP", "--address", ADDRESS, "--", "--workers", "1"])


def log_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    assert lines[0] == f"submitted job {JOB_ID} to {ADDRESS}"
    return lines[1:-1]


@pytest.mark.parametrize("error", [
    ConnectionResetError(104, "Connection reset by peer"),
    aiohttp.ClientConnectionError("Cannot connect to host head:8265"),
    aiohttp.ServerDisconnectedError(),
    asyncio.TimeoutError(),
    RuntimeError("WebSocket connection closed unexpectedly with close code 1006"),
    handshake_error(503, "Service Unavailable"),
], ids=lambda e: type(e).__name__)
def test_a_dropped_stream_is_reopened_and_every_line_shown_once(monkeypatch, caplog, error):
    client = FakeJobClient(tail_plan=[(2, error), (0, ConnectionRefusedError(111, "Connection refused"))],
                           info_errors=[requests.exceptions.ConnectionError("Max retries exceeded")])
    result = run_submit(monkeypatch, client)
    assert result.exit_code == 0, result.output
    assert log_lines(result.stdout) == LINES
    assert result.stdout.splitlines()[-1] == f"job {JOB_ID} succeeded"
    assert "Traceback" not in result.output and not result.stderr
    assert client.tails == 3 and client.log_downloads == 0
    warnings = [r for r in caplog.records if r.name == "latent_decoder.submit" and r.levelname == "WARNING"]
    assert warnings and all("\n" not in r.getMessage() and r.exc_info is None for r in warnings)


def test_the_failed_jobs_exit_status_comes_back_after_a_reconnect(monkeypatch):
    client = FakeJobClient(tail_plan=[(1, aiohttp.ServerDisconnectedError())], status=JobStatus.FAILED, exit_code=2)
    result = run_submit(monkeypatch, client)
    assert result.exit_code == 2, result.output
    assert log_lines(result.stdout) == LINES and result.stdout.splitlines()[-1] == f"job {JOB_ID} failed"
    assert client.log_downloads == 0


def test_a_stream_that_stalls_after_the_job_ended_is_reopened(monkeypatch):
    """A dead connection can hang without an error: once the job has ended and nothing comes, reconnect."""
    client = FakeJobClient(tail_plan=[(1, None)])
    result = run_submit(monkeypatch, client)
    assert result.exit_code == 0, result.output
    assert log_lines(result.stdout) == LINES and client.tails == 2 and client.log_downloads == 0


def test_an_unreachable_dashboard_ends_in_one_line_after_the_give_up_time(monkeypatch):
    refused = ConnectionRefusedError(111, "Connection refused")
    client = FakeJobClient(tail_plan=[(1, refused)] + [(0, refused)] * 1000, info_errors=[refused] * 1000)
    start = time.monotonic()
    result = run_submit(monkeypatch, client)
    elapsed = time.monotonic() - start
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot reach the Ray dashboard at {ADDRESS} for 0.5 s while following job {JOB_ID}")
    assert "Connection refused" in line and f"ray job status {JOB_ID}" in line
    assert "Traceback" not in result.output
    assert submit_module.GIVE_UP_S <= elapsed < 10 and client.tails > 3
    # what had arrived before the connection went is still shown
    assert result.stdout.splitlines()[1:] == ["starting decode", "item 1 of 2 do"]
    assert client.log_downloads == 0


@pytest.mark.parametrize("error", [
    RuntimeError("Request failed with status code 404: Job raysubmit_test does not exist."),
    handshake_error(401, "Unauthorized"),
], ids=["unknown-job", "bad-token"])
def test_errors_that_retrying_cannot_fix_end_at_once(monkeypatch, error):
    client = FakeJobClient(tail_plan=[(0, error)])
    start = time.monotonic()
    result = run_submit(monkeypatch, client)
    assert result.exit_code == 2 and time.monotonic() - start < submit_module.GIVE_UP_S
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: lost job {JOB_ID} at {ADDRESS}: ") and client.tails == 1


NO_AGENT = RuntimeError("Request failed with status code 500: No available agent to submit job, please try again "
                        "later.")


def test_a_fresh_heads_try_again_later_is_retried(monkeypatch):
    """Right after ``ray start`` the head may have no job agent yet; no job was created, so submit again."""
    client = FakeJobClient(tail_plan=[], submit_errors=[NO_AGENT, NO_AGENT])
    result = run_submit(monkeypatch, client)
    assert result.exit_code == 0, result.output
    assert log_lines(result.stdout) == LINES and not client.submit_errors


def test_submission_errors_end_in_one_line(monkeypatch):
    client = FakeJobClient(tail_plan=[], submit_errors=[NO_AGENT] * 1000)
    result = run_submit(monkeypatch, client)
    assert result.exit_code == 2 and result.stderr.splitlines() == [f"error: cannot submit to {ADDRESS}: {NO_AGENT}"]
    bad_request = RuntimeError("Request failed with status code 400: bad env")
    client = FakeJobClient(tail_plan=[], submit_errors=[bad_request])
    result = run_submit(monkeypatch, client)  # not retried: a second try would succeed
    assert result.exit_code == 2 and client.tails == 0
    assert result.stderr.splitlines() == [f"error: cannot submit to {ADDRESS}: {bad_request}"]
