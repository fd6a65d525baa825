"""Whether this replica is the active one under kopf peering: `splatops_operator_active`, and
whether it exports per-training metrics (metrics.OperatorMetrics).

kopf tells no handler that peering paused or resumed the operator: its pause state is a local
of kopf.spawn_tasks(). But it stops every daemon when it pauses, with the public reason
`kopf.DaemonStoppingReason.OPERATOR_PAUSING` (kopf/_core/engines/daemons.py: daemon_killer, and
pause_daemons for daemons spawned from an event that slipped in), and respawns the daemons it so
stopped from the re-list's events when it resumes (only those that exited on their own are
`forever_stopped`). So we run one daemon on our own peering object: it starts when kopf resumes
and is stopped when kopf pauses. kopf pauses only for the peers listed in that object
(kopf/_core/engines/peering.py: process_peering_event) or, with mandatory peering, from startup
until it reads it (_core/reactor/orchestration.py: pre-activated toggles, peering_missing); the
object therefore exists whenever a pause can happen. Without peering (standalone) kopf never
pauses and no daemon is needed.
"""

from __future__ import annotations

from typing import Any

import kopf

from splatops.controller.handlers.state import Runtime
from splatops.controller.settings import Settings

_PAUSED_OR_EXITING = kopf.DaemonStoppingReason.OPERATOR_PAUSING | kopf.DaemonStoppingReason.OPERATOR_EXITING


def peering_plural(settings: Settings) -> str | None:
    """The kind of peering object kopf reads (as kopf's guess_selectors picks it); None: kopf
    runs without peering and never pauses."""
    if settings.standalone:
        return None
    return "kopfpeerings" if settings.namespaces else "clusterkopfpeerings"


def is_ours(settings: Settings, *, name: str, **_: Any) -> bool:
    """The daemon's filter: kopf reads only the peering object of its peering name."""
    return name == settings.peering_name


def active_at_startup(settings: Settings) -> bool:
    """kopf starts paused only when peering is mandatory (its peering toggles start on, and stay
    so until it reads the peering object). Otherwise it acts at once, and a later pause stops the
    daemon, which sets the state then; a pause before kopf even lists the peering object (not
    mandatory, yet two replicas: unsupported, see Settings.peering_mandatory) shows as active."""
    return not settings.peering_mandatory


def active_after(reason: kopf.DaemonStoppingReason | None, active: bool) -> bool:
    """The state once the peering daemon stopped for `reason`. Deletion of the peering object
    (e.g. the chart's hook re-creating it) does not pause kopf: the state stands, and the new
    object's daemon confirms it."""
    return False if reason is not None and reason & _PAUSED_OR_EXITING else active


def set_active(rt: Runtime, active: bool) -> None:
    rt.metrics.set_active(active)
    if not active:
        # The progress read before a pause is stale when we resume (the other replica wrote on):
        # forgetting it makes the first poll after resuming record the progress gauges again.
        for st in rt.trainings.values():
            st.last_progress_step = None


async def started(rt: Runtime, **_: Any) -> None:
    """kopf.on.startup: runs before any watch starts."""
    set_active(rt, active_at_startup(rt.settings))


async def stopping(rt: Runtime, **_: Any) -> None:
    """kopf.on.cleanup: the operator exits."""
    set_active(rt, False)


async def peering_daemon(rt: Runtime, *, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Runs while kopf is not paused; it waits on its stop flag, not a sleep (kopf's idiom)."""
    set_active(rt, True)
    await stopped.wait()
    set_active(rt, active_after(stopped.reason, rt.metrics.active))
