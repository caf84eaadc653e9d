"""References a method is judged against: finite differences and the naive loop, plus the
pre-checks (determinism, batch coupling) that decide which methods can apply at all."""

from jacverify.oracles.finite_differences import directional_differences, finite_differences
from jacverify.oracles.prechecks import (GRAPH_CUT, TANGENT_DROPPED, Coupling, check_coupling,
                                        check_determinism, effective_precision, graph_cut,
                                        tangent_dropped)

__all__ = ["finite_differences", "directional_differences", "check_coupling", "check_determinism",
           "Coupling", "effective_precision", "graph_cut", "tangent_dropped", "GRAPH_CUT",
           "TANGENT_DROPPED"]
