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


class Terminated(BaseException):
    """SIGTERM (node drain, preemption, pod deletion): stop now; the retried pod resumes.

    A BaseException (like KeyboardInterrupt) so that no `except Exception` on the way swallows it.
    `resume_step`: the step of the newest checkpoint a retried pod resumes from (None: unknown).
    """

    def __init__(self, resume_step: int | None = None) -> None:
        self.resume_step = resume_step
        where = f"resumes from step {resume_step}" if resume_step is not None else "resumes from the last checkpoint"
        super().__init__(f"{contract.MSG_TERMINATED}; {where}")
