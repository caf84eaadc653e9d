"""The exceptions jacverify raises: one root, one per thing that can be wrong with a case."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jacverify.report import Report

__all__ = [
    "JacverifyError",
    "InvalidArgument",
    "FunctionRaised",
    "NondeterministicFunction",
    "NonFiniteOutput",
    "JacobianTooLarge",
    "MismatchError",
    "NotVerified",
    "NotApplicable",
]


class JacverifyError(Exception):
    """Root of every error jacverify raises on purpose."""


class InvalidArgument(JacverifyError, ValueError):
    """An argument to a public function is wrong; the message names it and says how to fix it."""


class FunctionRaised(JacverifyError):
    """The function under test raised on the case's inputs before any derivative was taken."""


class NondeterministicFunction(JacverifyError):
    """The function returned different outputs for the same input (randomness or hidden state)."""


class NonFiniteOutput(JacverifyError):
    """The function returned NaN or Inf, so no derivative of it can be checked."""


class JacobianTooLarge(JacverifyError, MemoryError):
    """The reference Jacobian would not fit in the memory budget given to the check."""


class NotApplicable(JacverifyError):
    """Raised by a method that finds, while running, that its assumption does not hold here."""


class MismatchError(JacverifyError, AssertionError):
    """A method disagreed with the trusted reference; ``.report`` holds the whole report."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


class NotVerified(JacverifyError, AssertionError):
    """Nothing was verified against a trusted reference (every method raised or did not apply, or
    a method the caller required could not run); ``.report`` holds the whole report."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report
