"""Exit codes and the errors the CLI reports (kept apart from the commands, which import the
Kubernetes client: `splatops local` must set KUBECONFIG before kubernetes_asyncio is imported)."""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """A bad value the user can fix (exit 2)."""


def err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
