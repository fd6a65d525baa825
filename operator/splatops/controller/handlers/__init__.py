"""kopf handlers, kept thin over the pure modules (jobs, status, failures, queue)."""

from splatops.controller.handlers.registration import register

__all__ = ["register"]
