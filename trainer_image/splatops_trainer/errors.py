"""The trainer's one failure type: a contract reason plus an actionable message.

The CLI maps the reason to the process exit code (`contract.EXIT_CODE_FOR_REASON`) and writes it
to the termination message, so the operator can tell "fix your input" (2) from "retry" (1).
"""

from __future__ import annotations

from splatops import contract


class TrainerError(Exception):
    def __init__(self, reason: contract.Reason, message: str) -> None:
        super().__init__(message)
        self.reason = contract.Reason(reason)
        self.message = message

    @property
    def exit_code(self) -> int:
        return int(contract.EXIT_CODE_FOR_REASON.get(self.reason, contract.ExitCode.ERROR))

    def __str__(self) -> str:
        return self.message


def invalid_options(message: str) -> TrainerError:
    return TrainerError(contract.Reason.INVALID_OPTIONS, message)
