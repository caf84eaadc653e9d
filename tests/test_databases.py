"""Shared example databases (NOTE [shared example database] in jacverify/databases.py): what
``--database`` / ``database=`` / ``--jacverify-database`` accept, and two workers with only a real
Redis server in common replaying each other's failures."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis.database import DirectoryBasedExampleDatabase

from jacverify.campaign import resolve_database
from jacverify.cli_common import Usage
from jacverify.databases import database_argument, parse_database

REDIS_URL = "redis://127.0.0.1:{port}/0"


def test_parse_database_names():
    assert parse_database("profile") == "profile"
    assert parse_database("none") is None and parse_database("") is None
    assert isinstance(parse_database("some/dir"), DirectoryBasedExampleDatabase)
    assert database_argument(None) == "profile"


def test_redis_url_without_connecting():
    pytest.importorskip("redis", reason="the redis client (pip install 'hypothesis[redis]')")
    from hypothesis.extra.redis import RedisExampleDatabase

    # no server listens there: nothing connects until an example is saved or fetched
    assert isinstance(resolve_database("redis://127.0.0.1:1/0"), RedisExampleDatabase)
    assert isinstance(parse_database("redis://localhost:6379/2"), RedisExampleDatabase)


def test_malformed_redis_url_is_a_usage_error():
    pytest.importorskip("redis", reason="the redis client (pip install 'hypothesis[redis]')")
    with pytest.raises(Usage, match=r"--database 'redis://:notaport/0': .*redis://HOST:PORT/DB"):
        database_argument("redis://:notaport/0")


@pytest.mark.parametrize("command", [["fuzz", "--examples", "1"], ["fuzz-rules", "--op", "aten::sin"]])
def test_cli_fuzzers_take_database_and_refuse_a_bad_one(command, capsys):
    pytest.importorskip("redis", reason="the redis client (pip install 'hypothesis[redis]')")
    from jacverify.cli import main

    assert main([*command, "--database", "redis://:x/0"]) == 2  # before any example runs
    assert "--database 'redis://:x/0'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server (Debian's package) on a free loopback port, stopped afterwards."""
    pytest.importorskip("redis", reason="the redis client (pip install 'hypothesis[redis]')")
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server on PATH (apt-get install redis-server; .ci/run does)")
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Redis(port=port)
    deadline = time.monotonic() + 30  # a start-up wait, not a measurement
    while True:
        try:
            client.ping()
            break
        except RedisConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"redis-server did not start on port {port}")
            time.sleep(0.1)
    yield REDIS_URL.format(port=port)
    proc.terminate()
    proc.wait(timeout=30)


# A rule whose vmap mixes samples: every example with two or more samples fails.
WORKER_FILE = '''
    from jacverify.examples.rules import MixesSamples


    class Mixing(MixesSamples):
        """inherits MixesSamples's wrong vmap rule"""
'''


def _worker(cwd: Path, url: str) -> dict:
    cwd.mkdir()
    (cwd / "mixing.py").write_text(textwrap.dedent(WORKER_FILE))
    result = subprocess.run(
        [sys.executable, "-m", "jacverify", "fuzz-rules", "mixing.py", "--examples", "200",
         "--shrink-seconds", "20", "--database", url, "--json", "out.json"],
        cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    (rule,) = json.loads((cwd / "out.json").read_text())["rules"]
    return rule


@pytest.mark.slow
def test_two_workers_share_failures_through_redis_only(tmp_path, redis_url):
    from redis import Redis

    Redis.from_url(redis_url).flushdb()
    first = _worker(tmp_path / "worker-1", redis_url)
    assert first["verdict"] == "failed"
    second = _worker(tmp_path / "worker-2", redis_url)  # another directory, the same Redis
    # the saved failure is the first example the second worker runs: replayed, not searched for
    assert second["verdict"] == "failed" and second["failed_at"] == 1, second
