"""Sharded sweeps (NOTE [shards] in jacverify/shards.py): ``--shard I/N`` and ``jacverify merge``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from jacverify.cli_merge import document_exit_status, merge_documents
from jacverify.errors import InvalidArgument
from jacverify.shards import Shard, parse_shard, select_shard, shard_body

# a fixed subset, in the order given on the command line (the order shards are cut from)
OPS = ("sin", "tanh", "exp", "mul", "matmul", "sum")


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_in_order(count):
    items = list(range(10))
    parts = [Shard(i, count).select(items) for i in range(1, count + 1)]
    assert sorted(x for p in parts for x in p) == items
    assert all(p == sorted(p) for p in parts)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_malformed_shard(text):
    with pytest.raises(argparse.ArgumentTypeError, match="must be I/N"):
        parse_shard(text)


def test_shard_validates_and_empty_shard_is_refused():
    with pytest.raises(InvalidArgument, match="1 <= index <= count"):
        Shard(3, 2)
    with pytest.raises(ValueError, match="leave nothing for shard 3; use at most 2 shards"):
        select_shard(["a", "b"], Shard(3, 3), empty=ValueError)


def _ops_doc(shard, names, status="agree"):
    return {"schema_version": 2, "kind": "ops", "seconds": 1.0, **shard,
            "operators": [{"name": n, "status": status, "checks": []} for n in names]}


def test_merge_restores_the_unsharded_order_and_status():
    names = list("abcde")
    docs = [_ops_doc(shard_body(Shard(i, 2), len(names)), Shard(i, 2).select(names))
            for i in (2, 1)]
    merged = merge_documents(docs)
    assert [o["name"] for o in merged["operators"]] == names
    assert merged["counts"]["agree"] == 5 and merged["merged_from"] == ["2/2", "1/2"]
    assert document_exit_status(merged) == 0
    docs[0]["operators"][0]["status"] = "known"
    assert document_exit_status(merge_documents(docs)) == 1


@pytest.mark.parametrize(("docs", "match"), [
    ([_ops_doc(shard_body(Shard(1, 2), 2), ["a"])], r"missing \[2\]"),
    ([_ops_doc(shard_body(Shard(1, 2), 2), ["a"])] * 2, r"repeated \[1\]"),
    ([_ops_doc(shard_body(Shard(1, 2), 2), ["a"]), _ops_doc(shard_body(Shard(2, 2), 3), ["b"])],
     "shards of different runs"),
    ([_ops_doc(shard_body(Shard(1, 2), 2), ["a"]), _ops_doc(shard_body(Shard(2, 2), 2), ["a"])],
     "'a' is in both"),
    ([_ops_doc({}, ["a"]), _ops_doc({}, ["b"])], "not a shard"),
    ([_ops_doc({}, ["a"]), {"kind": "check"}], "of one kind"),
])
def test_merge_refuses_what_is_not_one_run(docs, match):
    with pytest.raises(ValueError, match=match):
        merge_documents(docs)


def _jacverify(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jacverify", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_sharded_sweep_merges_to_the_unsharded_run(tmp_path):
    ops = [a for op in OPS for a in ("--op", op)]
    # a generous per-operator timeout: an operator abandoned on a loaded machine is not the point
    common = [*ops, "--samples", "1", "--timeout", "300", "--budget", "0.2"]
    whole = _jacverify("ops", *common, "--json", "all.json", cwd=tmp_path)
    for i in (1, 2):
        shard = _jacverify("ops", *common, "--shard", f"{i}/2", "--json", f"{i}.json",
                           cwd=tmp_path)
        assert shard.returncode == whole.returncode, shard.stdout + shard.stderr
    merged = _jacverify("merge", "2.json", "1.json", "--json", "merged.json", cwd=tmp_path)
    assert merged.returncode == whole.returncode, merged.stdout + merged.stderr
    one = json.loads((tmp_path / "all.json").read_text())
    both = json.loads((tmp_path / "merged.json").read_text())
    assert [o["name"] for o in both["operators"]] == [o["name"] for o in one["operators"]]
    # each operator's status is the unsharded run's, and so is every check of OpInfo's samples; the
    # fuzzer's own checks run for a time budget, so how many examples they saw may differ
    def sweep(checks):
        return [c for c in checks if c["sample"] != "fuzzed"]

    for a, b in zip(one["operators"], both["operators"]):
        assert (a["status"], sweep(a["checks"])) == (b["status"], sweep(b["checks"])), a["name"]
    assert both["counts"] == one["counts"]


# `jacverify fuzz --shard I/N`: the network families are the targets (NOTE [shards])
FAMILIES = ("mlp", "residual", "layernorm", "conv1d", "conv2d", "attention", "rnn", "elementwise")


def _fuzz_doc(shard, families, verdict="passed", **fields):
    return {"schema_version": 2, "kind": "fuzz", "quantity": "batch_jacobian", "methods": None,
            **shard, "families": list(families), **fields,
            "campaigns": [{"families": list(families), "verdict": verdict, "examples": 3,
                           "verified": 3, "seed": 0, "failure": None}]}


def _fuzz_shards(count, verdicts=None):
    verdicts = verdicts or ["passed"] * count
    return [_fuzz_doc(shard_body(Shard(i, count), len(FAMILIES)), Shard(i, count).select(FAMILIES),
                      verdicts[i - 1]) for i in range(1, count + 1)]


def test_merged_fuzz_shards_cover_every_family_in_the_run_order():
    merged = merge_documents(_fuzz_shards(3)[::-1])
    assert merged["families"] == list(FAMILIES)
    assert [c["families"] for c in merged["campaigns"]] == [Shard(i, 3).select(FAMILIES)
                                                            for i in (1, 2, 3)]
    assert merged["merged_from"] == ["3/3", "2/3", "1/3"] and "shard" not in merged


@pytest.mark.parametrize(("verdicts", "status"), [
    (["passed", "passed"], 0),
    (["passed", "failed"], 1),
    (["failed", "unverified"], 1),
    (["unverified", "passed"], 3),
])
def test_merged_fuzz_exit_status_is_the_unsharded_rule(verdicts, status):
    # the unsharded run's rule (cli_common.exit_status): any failure fails, then unverified
    assert document_exit_status(merge_documents(_fuzz_shards(2, verdicts))) == status


@pytest.mark.parametrize(("docs", "match"), [
    (_fuzz_shards(2)[:1], r"missing \[2\]"),
    ([_fuzz_shards(2)[0], _ops_doc(shard_body(Shard(2, 2), 2), ["a"])], "of one kind"),
    ([_fuzz_shards(2)[0], {**_fuzz_shards(2)[1], "quantity": "hessian"}], "different runs"),
    ([_fuzz_shards(2)[0], _fuzz_doc(shard_body(Shard(2, 2), 8), ["mlp", "rnn"])],
     "'mlp' is in both"),
    ([_fuzz_shards(2)[0], _fuzz_doc(shard_body(Shard(2, 2), 8), ["residual"])],
     "hold 5 of the run's 8"),
])
def test_merge_refuses_fuzz_shards_that_are_not_one_run(docs, match):
    with pytest.raises(ValueError, match=match):
        merge_documents(docs)


def test_cli_merge_refuses_a_fuzz_shard_mixed_with_an_ops_shard(tmp_path, capsys):
    from jacverify.cli import main

    (tmp_path / "fuzz.json").write_text(json.dumps(_fuzz_shards(2)[0]))
    (tmp_path / "ops.json").write_text(json.dumps(_ops_doc(shard_body(Shard(2, 2), 2), ["a"])))
    assert main(["merge", str(tmp_path / "fuzz.json"), str(tmp_path / "ops.json")]) == 2
    assert "merge combines documents of one kind" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "3/3", "--families", "mlp,rnn"], "2 target(s) leave nothing for shard 3"),
    (["--shard", "9/9"], "8 target(s) leave nothing for shard 9; use at most 8 shards"),
    (["--families", "mlp,transformer"], "families='transformer' (type=str) must be one of"),
    (["--json", "/nonexistent-dir/fuzz.json"], "does not exist"),
])
def test_cli_fuzz_refuses_an_empty_shard_before_any_example(args, message, capsys):
    from jacverify.cli import main

    assert main(["fuzz", "--examples", "1", "--seed", "0", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["0/2", "3/2", "2"])
def test_cli_fuzz_refuses_a_malformed_shard(text, capsys):
    from jacverify.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fuzz", "--shard", text])
    assert exit_.value.code == 2 and "must be I/N" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(("function", "status"), [
    (None, 0),
    ("jacverify.examples.twins:CubeWrongJvp", 1),  # in every network: every campaign fails
], ids=["correct", "wrong_jvp"])
def test_sharded_fuzz_merges_to_the_unsharded_exit_status(tmp_path, function, status):
    common = ["--examples", "3", "--seed", "0", "--max-depth", "1", "--shrink-seconds", "1",
              "--database", "none", *(["--function", function] if function else [])]
    whole = _jacverify("fuzz", *common, "--json", "all.json", cwd=tmp_path)
    assert whole.returncode == status, whole.stdout + whole.stderr
    for i in (1, 2):
        shard = _jacverify("fuzz", *common, "--shard", f"{i}/2", "--json", f"{i}.json",
                           cwd=tmp_path)
        assert shard.returncode == status, shard.stdout + shard.stderr
    merged = _jacverify("merge", "2.json", "1.json", "--json", "merged.json", cwd=tmp_path)
    assert merged.returncode == whole.returncode, merged.stdout + merged.stderr
    one = json.loads((tmp_path / "all.json").read_text())
    both = json.loads((tmp_path / "merged.json").read_text())
    assert one["kind"] == both["kind"] == "fuzz"
    assert both["families"] == one["families"] == list(FAMILIES)
    assert [c["families"] for c in both["campaigns"]] == [Shard(i, 2).select(FAMILIES)
                                                          for i in (1, 2)]
    assert {c["verdict"] for c in both["campaigns"]} == {"passed" if status == 0 else "failed"}
    if status:
        assert all("CubeWrongJvp" in c["failure"]["snippet"] for c in both["campaigns"])
        assert "replay with" in merged.stdout
