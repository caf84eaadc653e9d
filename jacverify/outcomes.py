"""What running one target gave (a report, or the one-line reason it could not be checked), and the
session-wide JSON document built from many of them (schema in the README)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jacverify.report import Report

__all__ = ["Outcome", "SCHEMA_VERSION", "document", "session_document", "write_json"]

# The version of every JSON document jacverify writes (check, the plugin's report, fuzz-rules,
# ops): 2 added "verdict", "findings" and "verification" to checks and targets.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Outcome:
    """One target's result. ``error`` set means the target itself could not be checked.

    ``error_status`` says what such an error means: ``failed`` for findings (nondeterminism, NaN
    output, the function raising on its input or exiting), ``unverified`` when the check could not
    finish (a time limit, a Jacobian over the memory budget), ``skipped`` when the target could not
    be set up (no input could be inferred).
    """

    name: str
    kind: str
    report: Report | None = None
    error: str | None = None
    error_status: str = "skipped"
    input_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def status(self) -> str:
        """passed, failed, unverified (NOTE [earned verdict]) or skipped."""
        if self.report is not None:
            return str(self.report.verdict)
        return self.error_status

    def to_dict(self) -> dict[str, Any]:
        body = self.report.to_dict() if self.report else {}
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "findings": body.get("findings", []),
            "unresolved": body.get("unresolved"),
            "verification": body.get("verification"),
            "error": self.error,
            "input_shapes": [list(s) for s in self.input_shapes],
            "coupled": body.get("coupled"),
            "coupling": body.get("coupling"),
            "trusted": body.get("trusted"),
            "fastest": body.get("fastest"),
            "notes": body.get("notes", []),
            "results": body.get("results", []),
        }


def document(kind: str, **body: Any) -> dict[str, Any]:
    """A JSON document of ``kind`` ("check", "pytest", "fuzz-rules", "ops") with the versions
    every document carries."""
    import torch

    import jacverify

    return {"schema_version": SCHEMA_VERSION, "kind": kind,
            "jacverify_version": jacverify.__version__, "torch_version": torch.__version__, **body}


def session_document(outcomes: list[Outcome], *, device: str, dtype: str | None,
                     seed: int) -> dict[str, Any]:
    return document(
        "check",
        device=device,
        dtype=dtype,
        seed=seed,
        targets=[o.to_dict() for o in outcomes],
    )


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
