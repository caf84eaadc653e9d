"""One torch thread per test process (tests/ only, not benchmarks/).

The tests' tensors are tiny, so torch's intra-op threads only spin against each other, the xdist
workers and whatever else runs on the machine: the fast set took 3x longer with 2 threads than with
1 on a busy 2-core machine. Set before torch is imported, so the CLI and pytester subprocesses
inherit it; an OMP_NUM_THREADS already set wins.
"""

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (e.g. `pytest jacverify tests`): set it directly
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
