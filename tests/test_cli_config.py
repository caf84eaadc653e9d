"""`jacverify check` on real files: an input per forward argument, constructor arguments and
example inputs from [tool.jacverify] (or --config), skipped targets counted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from jacverify import InvalidArgument
from jacverify.config import load_config
from jacverify.discover import discover, example_input, load

TWO_INPUTS = """
    import torch
    from torch import nn

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 3)

        def forward(self, x, y):
            return torch.tanh(self.proj(x)) * torch.sigmoid(self.proj(y))

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 2)

        def forward(self, a, b):
            return self.lin(torch.cat([a, b], -1)).tanh()
"""

NEEDS_ARGS = """
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self, width, depth, act="tanh"):
            super().__init__()
            self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

        def forward(self, x, mask):
            return torch.tanh(self.layers(x)) * mask.sigmoid()

    class Unconfigured(nn.Module):
        def __init__(self, n):
            super().__init__()
"""

CONFIG = """
    [tool.jacverify.targets.Encoder]
    args = [5, 2]
    kwargs = { act = "tanh" }
    inputs = [[4, 5], [4, 5]]
"""


def _write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jacverify", *args], capture_output=True,
                          text=True, timeout=300)


def test_a_two_input_forward_gets_an_input_per_argument(tmp_path):
    path = _write(tmp_path, "two.py", TWO_INPUTS)
    targets, skipped = discover(load(str(path)), str(path))
    shapes = {}
    for tgt in targets:
        inputs, _ = example_input(tgt, tgt.build(), 4, 0, None)
        shapes[tgt.name.rpartition("::")[2]] = [tuple(t.shape) for t in inputs]
    assert shapes == {"Gate": [(4, 4), (4, 4)], "Concat": [(4, 3), (4, 3)]} and not skipped


def test_constructor_arguments_and_inputs_come_from_pyproject(tmp_path):
    path = _write(tmp_path, "enc.py", NEEDS_ARGS)
    configs = load_config(_write(tmp_path, "pyproject.toml", CONFIG))
    targets, skipped = discover(load(str(path)), str(path), configs)
    (enc,) = targets
    assert enc.args == (5, 2) and enc.kwargs == {"act": "tanh"}
    inputs, axis = example_input(enc, enc.build(), 4, 0, torch.float64)
    assert [tuple(t.shape) for t in inputs] == [(4, 5), (4, 5)] and axis == 0
    assert len(skipped) == 1 and "Unconfigured: skipped, its constructor needs arguments" in skipped[0]


@pytest.mark.parametrize("body,match", [
    ("[tool.jacverify.targets.Net]\nargz = [1]\n", "unknown key.*argz"),
    ("[tool.jacverify.targets.Net]\ninputs = [4, 3]\n", r"inputs=\[4, 3\] .* must be a non-empty"),
    ("[tool.jacverify.targets.Net\n", "cannot read it as TOML"),
])
def test_a_malformed_configuration_is_refused(tmp_path, body, match):
    with pytest.raises(InvalidArgument, match=match):
        load_config(_write(tmp_path, "pyproject.toml", body))


def test_a_forward_that_runs_on_no_guess_asks_for_configured_inputs(tmp_path):
    path = _write(tmp_path, "odd.py", """
        import torch
        from torch import nn

        class Odd(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 2)

            def forward(self, x, y):
                return self.lin(x) @ y.T  # y needs another shape
    """)
    (tgt,), _ = discover(load(str(path)), str(path))
    from jacverify.discover import NoInput

    with pytest.raises(NoInput, match=r"its forward takes 2 tensors.*inputs = \[\[B"):
        example_input(tgt, tgt.build(), 4, 0, None)


@pytest.mark.parametrize("given, match", [
    ("[torch.randn(4, 3)]", None),  # a list of tensors is fine
    ("'abc'", r"gave str 'abc', not a tensor: return a tensor with the batch first"),
    ("[1.0, 2.0]", r"gave a list whose item 0 is float 1.0, not a tensor"),
    ("(torch.randn(4, 3), 5)", r"gave a tuple whose item 1 is int 5, not a tensor"),
    ("7", r"gave int 7, not a tensor"),  # was a TypeError from tuple(7): FAILED, not SKIPPED
])
def test_an_example_input_that_is_not_tensors_is_named(tmp_path, given, match):
    """A fresh user's example_input returning a str, a list or (tensor, 5) was reported as
    "gave tuple, not tensors" (the type after conversion), and an int raised a TypeError."""
    path = _write(tmp_path, "given.py", f"""
        import torch
        from torch import nn

        class Given(nn.Linear):
            def __init__(self):
                super().__init__(3, 2)

            def example_input(self):
                return {given}
    """)
    (tgt,), _ = discover(load(str(path)), str(path))
    from jacverify.discover import NoInput

    if match is None:
        (x,), _ = example_input(tgt, tgt.build(), 4, 0, None)
        assert x.shape == (4, 3)
        return
    with pytest.raises(NoInput, match=match):
        example_input(tgt, tgt.build(), 4, 0, None)


@pytest.mark.slow
def test_cli_checks_both_files_without_edits(tmp_path):
    two = _write(tmp_path, "two.py", TWO_INPUTS)
    enc = _write(tmp_path, "enc.py", NEEDS_ARGS)
    _write(tmp_path, "pyproject.toml", CONFIG + "[tool.jacverify.targets.Encodr]\nargs = [1]\n")
    result = _run("check", "--quiet", str(two), str(enc))
    out = result.stdout
    assert "two.py::Gate: PASSED" in out and "two.py::Concat: PASSED" in out
    assert "enc.py::Encoder: PASSED" in out
    assert "enc.py::Unconfigured: skipped, its constructor needs arguments" in out
    assert "3 passed, 0 failed, 0 unverified, 1 skipped target(s)" in out
    assert result.returncode == 0, result.stderr
    # a misspelled target name was ignored without a word (a fresh user)
    assert "note: the configuration's targets.Encodr names nothing in" in result.stderr
    assert "targets.Encoder " not in result.stderr


@pytest.mark.slow
def test_cli_config_option_names_another_file(tmp_path):
    (tmp_path / "src").mkdir()
    enc = _write(tmp_path / "src", "enc.py", NEEDS_ARGS)
    config = _write(tmp_path, "jacverify.toml", "[targets.Encoder]\nargs = [3, 1]\n"
                    "inputs = [[2, 3], [2, 3]]\n")
    result = _run("check", "--quiet", "--config", str(config), str(enc))
    assert "enc.py::Encoder: PASSED" in result.stdout and result.returncode == 0, result.stdout
    assert _run("check", "--config", str(tmp_path / "none.toml"), str(enc)).returncode == 2


@pytest.mark.parametrize(("given", "ok"), [("1.5", False), ("1.5GiB", True), ("2e9", True),
                                           ("512MiB", True), ("0.5KiB", True), ("0.3", False),
                                           ("inf", False), ("2**3000", False)])
def test_max_memory_on_the_command_line_is_a_whole_number_of_bytes(given, ok, capsys):
    """--max-memory 1.5 was read as 1 byte ("over the max_memory=1 bytes budget", a fresh user)
    where the API refuses 1.5; a fraction of a unit that makes whole bytes is fine. inf and
    2**3000 raised OverflowError tracebacks."""
    from jacverify.cli import main

    if ok:  # parsed: then the file that does not exist is the usage error
        assert main(["check", "--max-memory", given, "--quiet", "/nonexistent.py"]) == 2
        err = capsys.readouterr().err
        assert "/nonexistent.py" in err and "max-memory" not in err
    else:
        with pytest.raises(SystemExit) as e:
            main(["check", "--max-memory", given, "/nonexistent.py"])
        assert e.value.code == 2
        assert f"max-memory {given!r} must be a positive, whole number of bytes" \
            in capsys.readouterr().err
