"""The batching-rule fuzzer: custom ops' ``register_vmap`` rules, ``autograd.Function`` vmap
rules, and torch's own operators (``jacverify ops``), each checked against loops."""

from jacverify.rules.checks import CHECKS, CheckOutcome, RuleExample, run_checks
from jacverify.rules.fuzzer import RuleFailure, RuleReport, fuzz_batching_rule, rule_examples
from jacverify.rules.targets import Arg, RuleTarget, as_target, discover_rules

__all__ = ["fuzz_batching_rule", "RuleReport", "RuleFailure", "rule_examples", "RuleExample",
           "RuleTarget", "Arg", "as_target", "discover_rules", "run_checks", "CheckOutcome",
           "CHECKS"]
