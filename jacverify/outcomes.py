"""What running one target gave (a report, or the one-line reason it could not be checked), and the
session-wide JSON document built from many of them (schema in the README)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jacverify.report import Report

__all__ = ["Outcome", "session_document", "write_json"]


@dataclass(frozen=True)
class Outcome:
    """One target's result. ``error`` set means the target itself could not be checked.

    ``failed_precheck`` marks errors that count as findings (nondeterminism, NaN output, the
    function raising on its input) rather than the target being skipped.
    """

    name: str
    kind: str
    report: Report | None = None
    error: str | None = None
    failed_precheck: bool = False
    input_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def status(self) -> str:
        if self.report is not None:
            return "passed" if self.report.passed else "failed"
        return "failed" if self.failed_precheck else "skipped"

    def to_dict(self) -> dict[str, Any]:
        body = self.report.to_dict() if self.report else {}
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "error": self.error,
            "input_shapes": [list(s) for s in self.input_shapes],
            "coupled": body.get("coupled"),
            "coupling": body.get("coupling"),
            "trusted": body.get("trusted"),
            "fastest": body.get("fastest"),
            "notes": body.get("notes", []),
            "results": body.get("results", []),
        }


def session_document(outcomes: list[Outcome], *, device: str, dtype: str | None,
                     seed: int) -> dict[str, Any]:
    import torch

    import jacverify

    return {
        "jacverify_version": jacverify.__version__,
        "torch_version": torch.__version__,
        "device": device,
        "dtype": dtype,
        "seed": seed,
        "targets": [o.to_dict() for o in outcomes],
    }


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
