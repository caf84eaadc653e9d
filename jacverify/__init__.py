"""jacverify: differential testing of Jacobian computations in PyTorch.

Every way to compute a per-sample Jacobian, run on the same case and cross-checked against float64
finite differences and the naive loop:

>>> import torch, jacverify
>>> net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
>>> report = jacverify.check(net, torch.randn(8, 5))
>>> report.passed, report["vmap_jacrev"].status
(True, 'agree')

``jacverify.compare`` is the module of tolerances and ``compare(value, reference)``.
Names are imported on first use, so ``import jacverify`` (and the pytest plugin, which pytest loads
in every run of a downstream repo) does not import torch until something is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that holds it, grouped by what users do
_GROUPS: dict[str, dict[str, str]] = {
    "check": {  # cross-check every way to compute a derivative against trusted references
        "check": "jacverify.engine",
        "check_method": "jacverify.engine",
        "assert_jacobians_agree": "jacverify.engine",
        "check_jvps": "jacverify.quantities",
        "check_vjps": "jacverify.quantities",
        "check_per_sample_jvps": "jacverify.quantities",
        "check_hessians": "jacverify.quantities",
        "check_hessian_diagonals": "jacverify.quantities",
        "check_per_sample_grads": "jacverify.per_sample_grad",
        "target": "jacverify.discover",
        "make_case": "jacverify.case",
        "Case": "jacverify.case",
        "Report": "jacverify.report",
        "MethodResult": "jacverify.judge",
        "Status": "jacverify.judge",
        "Verdict": "jacverify.judge",
        "Comparison": "jacverify.compare",
        "Reference": "jacverify.compare",
        "tolerances": "jacverify.compare",
        "DEFAULT_MAX_MEMORY": "jacverify.references",
        "DEFAULT_TIME_BUDGET": "jacverify.references",
    },
    "fast": {  # the fastest verified way, planned and cached
        "batch_jacobian": "jacverify.auto",
        "plan": "jacverify.auto",
        "clear_plans": "jacverify.auto",
        "Plan": "jacverify.auto",
        "jvp_set": "jacverify.auto_sets",
        "batch_hessian": "jacverify.auto_sets",
    },
    "fuzz": {  # Hypothesis campaigns that shrink a failure to a reproducer
        "fuzz": "jacverify.fuzzing",
        "FuzzResult": "jacverify.fuzzing",
        "FuzzFailure": "jacverify.fuzzing",
        "fuzz_batching_rule": "jacverify.rules",
        "RuleReport": "jacverify.rules",
        "RuleFailure": "jacverify.rules",
    },
    "methods": {  # the registry of ways to compute a derivative
        "Method": "jacverify.methods",
        "Work": "jacverify.costs",
        "register_method": "jacverify.methods",
        "unregister_method": "jacverify.methods",
        "registered_methods": "jacverify.methods",
        "get_methods": "jacverify.methods",
        "user_method": "jacverify.user_methods",
    },
    "errors": {
        "JacverifyError": "jacverify.errors",
        "InvalidArgument": "jacverify.errors",
        "FunctionRaised": "jacverify.errors",
        "NondeterministicFunction": "jacverify.errors",
        "NonFiniteOutput": "jacverify.errors",
        "JacobianTooLarge": "jacverify.errors",
        "MismatchError": "jacverify.errors",
        "NotVerified": "jacverify.errors",
        "NotApplicable": "jacverify.errors",
    },
}
_EXPORTS = {name: module for group in _GROUPS.values() for name, module in group.items()}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jacverify' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; a test keeps it in step
    from jacverify.auto import Plan, batch_jacobian, clear_plans, plan
    from jacverify.auto_sets import batch_hessian, jvp_set
    from jacverify.case import Case, make_case
    from jacverify.compare import Comparison, Reference, tolerances
    from jacverify.discover import target
    from jacverify.engine import assert_jacobians_agree, check, check_method
    from jacverify.errors import (
        FunctionRaised,
        InvalidArgument,
        JacobianTooLarge,
        JacverifyError,
        MismatchError,
        NondeterministicFunction,
        NonFiniteOutput,
        NotApplicable,
        NotVerified,
    )
    from jacverify.costs import Work
    from jacverify.fuzzing import FuzzFailure, FuzzResult, fuzz
    from jacverify.judge import MethodResult, Status, Verdict
    from jacverify.per_sample_grad import check_per_sample_grads
    from jacverify.methods import (
        Method,
        get_methods,
        register_method,
        registered_methods,
        unregister_method,
    )
    from jacverify.quantities import (
        check_hessian_diagonals,
        check_hessians,
        check_jvps,
        check_per_sample_jvps,
        check_vjps,
    )
    from jacverify.references import DEFAULT_MAX_MEMORY, DEFAULT_TIME_BUDGET
    from jacverify.report import Report
    from jacverify.rules import RuleFailure, RuleReport, fuzz_batching_rule
    from jacverify.user_methods import user_method
