"""Showing a training's progress: a rich progress bar on a terminal, plain lines otherwise.

Plain lines (one per new phase or progress report) are what logs, CI and tests see; the bar is
for people. Both come from the same resource snapshots, so they never disagree.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TextIO

from splatops.client import original


class ProgressView:
    """Feed it resource snapshots; it prints what changed."""

    def __init__(self, name: str, stream: TextIO | None = None, *, bar: bool | None = None) -> None:
        self.name = name
        self.stream = stream or sys.stdout
        self.bar = self.stream.isatty() if bar is None else bar
        self._phase_line: str | None = None
        self._progress_line: str | None = None
        self._rich: Any = None
        self._task: Any = None

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._rich = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("PSNR {task.fields[psnr]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self._rich.start()
        self._task = self._rich.add_task(self.name, total=None, loss="-", psnr="-", eta="?")

    def update(self, resource: Mapping[str, Any]) -> None:
        phase = original.phase_line(resource)
        if phase != self._phase_line:
            self._phase_line = phase
            self._print(f"{self.name}: {phase}")
        line = original.progress_line(resource)
        if line and line != self._progress_line:
            self._progress_line = line
            progress = (resource.get("status") or {}).get("progress") or {}
            if self.bar:
                if self._rich is None:
                    self._start_bar()
                loss, psnr = progress.get("loss"), progress.get("psnr")
                self._rich.update(
                    self._task, completed=progress.get("step", 0), total=progress.get("maxSteps"),
                    loss=f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
                    psnr=f"{psnr:.2f}" if isinstance(psnr, (int, float)) else "-",
                    eta=original.format_eta(progress.get("etaSeconds")),
                )
            else:
                self._print(line)

    def _print(self, text: str) -> None:
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


class WaitTimeout(TimeoutError):
    pass


async def wait_until_done(
    fetch: Callable[[], Awaitable[Mapping[str, Any]]],
    view: ProgressView,
    *,
    interval: float = 1.0,
    timeout: float | None = None,
) -> Mapping[str, Any]:
    """Poll the resource until Succeeded or Failed, showing each change. Returns the last snapshot."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    try:
        while True:
            resource = await fetch()
            view.update(resource)
            if original.is_terminal(resource):
                return resource
            if deadline is not None and loop.time() >= deadline:
                raise WaitTimeout(f"still {original.phase_line(resource)} after {timeout:.0f}s")
            await asyncio.sleep(interval)
    finally:
        view.close()
