"""One run per output folder: an ``flock`` on ``OUT/.latent-decoder.lock``.

The kernel drops an flock when its process dies, so a run killed with SIGKILL never leaves
the folder stuck; the pid/host written inside only make the refusal message useful.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from .errors import OutputDirError, RunLockedError

LOCK_NAME = ".latent-decoder.lock"


class OutputLock:
    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputDirError(f"output folder {self.path.parent}: cannot write there: "
                                 f"{exc.strerror or exc} ({exc.filename or self.path})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = self._refusal(fd)
            os.close(fd)
            raise RunLockedError(message) from None
        except OSError as exc:  # ENOLCK / EOPNOTSUPP: some network filesystems have no locks
            os.close(fd)
            raise OutputDirError(f"cannot lock {self.path}: {exc.strerror or exc}; the output folder's "
                                 "filesystem does not support file locks, use a local --output-dir") from exc
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
            return f" (pid {info['pid']} on {info['host']}, started {started})"
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def ensure_free(self) -> None:
        """Refuse now (``RunLockedError``) when another run holds the folder, without creating anything:
        a run checks this before it spends time loading a model or starting Ray workers."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (or not readable): acquire() will tell
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise RunLockedError(self._refusal(fd)) from None
        except OSError:
            return
        finally:
            os.close(fd)

    def _refusal(self, fd: int) -> str:
        return (f"another latent-decoder run{self._holder(fd)} is writing to {self.path.parent}; "
                "wait for it to finish or stop it first")

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
