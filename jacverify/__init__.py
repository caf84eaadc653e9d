"""jacverify: differential testing of Jacobian computations in PyTorch.

Every way to compute a per-sample Jacobian, run on the same case and cross-checked against float64
finite differences and the naive loop:

>>> import torch, jacverify
>>> net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
>>> report = jacverify.check(net, torch.randn(8, 5))
>>> report.passed, report["vmap_jacrev"].status
(True, 'agree')
"""

from jacverify.case import Case, make_case
from jacverify.compare import Comparison, Reference, compare, tolerances
from jacverify.discover import target
from jacverify.engine import DEFAULT_MAX_MEMORY, assert_jacobians_agree, check, check_method
from jacverify.errors import (
    FunctionRaised,
    InvalidArgument,
    JacobianTooLarge,
    JacverifyError,
    MismatchError,
    NondeterministicFunction,
    NonFiniteOutput,
)
from jacverify.methods import Method, get_methods, register_method, registered_methods
from jacverify.report import MethodResult, Report

__version__ = "0.1.0"

__all__ = [
    "Case",
    "Comparison",
    "DEFAULT_MAX_MEMORY",
    "FunctionRaised",
    "InvalidArgument",
    "JacobianTooLarge",
    "JacverifyError",
    "Method",
    "MethodResult",
    "MismatchError",
    "NonFiniteOutput",
    "NondeterministicFunction",
    "Reference",
    "Report",
    "assert_jacobians_agree",
    "check",
    "check_method",
    "compare",
    "get_methods",
    "make_case",
    "register_method",
    "registered_methods",
    "target",
    "tolerances",
]
