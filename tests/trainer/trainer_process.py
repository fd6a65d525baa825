"""`python -m splatops_trainer` as a child process for tests that signal or watch it: stdout read
line by line, stderr to a file, a watchdog so a hung trainer fails its test, not the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest


class TrainerProcess:
    def __init__(self, args: list[str], stderr: Path, watchdog_s: float) -> None:
        self.err_path = stderr
        self._err = stderr.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "splatops_trainer", *args],
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=dict(os.environ))
        self._watchdog = threading.Timer(watchdog_s, self.proc.kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        self.lines: list[str] = []

    def finish(self, timeout: float) -> int:
        """Read the rest of stdout and wait for the exit code."""
        self.lines.extend(self.proc.stdout)  # type: ignore[arg-type]
        code = self.proc.wait(timeout=timeout)
        self._watchdog.cancel()
        self._err.close()
        return code

    def stderr(self) -> str:
        return self.err_path.read_text()

    def kill(self) -> None:
        """Teardown: a test that failed half-way leaves no trainer running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._watchdog.cancel()
        self._err.close()


T = TypeVar("T", bound=TrainerProcess)


def started_by(cls: Callable[..., T]) -> Callable[[], Iterator[Callable[..., T]]]:
    """A fixture that starts `cls(*args)` on request and kills every one it started at teardown."""

    @pytest.fixture
    def trainers() -> Iterator[Callable[..., T]]:
        started: list[T] = []
        yield lambda *args: started.append(cls(*args)) or started[-1]
        for trainer in started:
            trainer.kill()

    return trainers
