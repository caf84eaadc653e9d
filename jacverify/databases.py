"""Example databases named by text: what ``--database`` (CLI), ``--jacverify-database`` and the ini
key ``jacverify_database`` (pytest) accept, and ``database=`` of the fuzzers besides Hypothesis's
own ``ExampleDatabase`` objects. Importing this module imports neither torch nor redis.

NOTE [shared example database]
Hypothesis saves every failing example under its test's key and replays the saved ones before it
generates anything new. Workers that share one database therefore share their failures: a failure
found by any worker is replayed first by every other worker's next run (and by the next CI run)
without searching for it again. A directory shares failures between processes on one machine (or on
a shared file system); Redis (``redis://HOST:PORT/DB``, through ``hypothesis[redis]``'s
``RedisExampleDatabase``) shares them between machines. A campaign's configuration keys its failures
(:class:`jacverify.campaign.KeyedDatabase`), so two workers replay each other's failures when they
run the same configuration: the same target, strategy bounds and methods, whatever their working
directories.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DATABASE_HELP", "parse_database", "redis_database", "use_database",
           "database_argument", "REDIS_SCHEMES"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

DATABASE_HELP = ("where failures are saved and replayed first, shared by every worker that names "
                 "it: a directory, redis://HOST:PORT/DB (needs hypothesis[redis]), 'profile' (the "
                 "Hypothesis profile's: .hypothesis/ under dev and fuzz) or 'none' "
                 "(default: profile)")


def parse_database(text: str | None) -> Any:
    """The ``database=`` value that ``text`` names: ``"profile"`` stays ``"profile"``, ``"none"``
    (or empty) is None, a Redis URL is a ``RedisExampleDatabase``, anything else a directory.

    Args:
        text: ``--database``'s value.

    Returns:
        A value :func:`jacverify.campaign.resolve_database` accepts.

    Raises:
        InvalidArgument: a Redis URL without the ``redis`` client installed, or a malformed one.

    >>> parse_database("profile"), parse_database("none"), parse_database(None)
    ('profile', None, None)
    >>> type(parse_database("ci-examples")).__name__
    'DirectoryBasedExampleDatabase'
    """
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    text = str(text).strip()
    if text == "profile":
        return "profile"
    if text.startswith(REDIS_SCHEMES):
        return redis_database(text)
    from hypothesis.database import DirectoryBasedExampleDatabase

    return DirectoryBasedExampleDatabase(os.fspath(text))


def database_argument(text: str | None) -> Any:
    """``--database`` on the command line: ``"profile"`` when not given, else
    :func:`parse_database`.

    Raises:
        Usage: the database cannot be used (a usage error, exit status 2).
    """
    from jacverify.cli_common import Usage
    from jacverify.errors import InvalidArgument

    try:
        return "profile" if text is None else parse_database(text)
    except InvalidArgument as e:
        raise Usage(f"--database {text!r}: {e}") from None


def redis_database(url: str):
    """A ``RedisExampleDatabase`` on the Redis server at ``url`` (``redis://HOST:PORT/DB``).

    No connection is made until the first example is saved or fetched.

    Raises:
        InvalidArgument: the ``redis`` client is not installed, or ``url`` is malformed.
    """
    from jacverify.errors import InvalidArgument

    try:
        from hypothesis.extra.redis import RedisExampleDatabase
        from redis import Redis
    except ImportError:
        raise InvalidArgument(f"database={url!r} needs the redis client: "
                              "pip install 'hypothesis[redis]' (or jacverify[redis])") from None
    try:
        client = Redis.from_url(url)
    except ValueError as e:
        raise InvalidArgument(f"database={url!r} is not a Redis URL ({e}); give "
                              "redis://HOST:PORT/DB") from None
    return RedisExampleDatabase(client)


def use_database(text: str) -> Any:
    """Make the database ``text`` names the default of every Hypothesis test from now on (the
    pytest plugin's ``--jacverify-database``): registers and loads a profile that is the current
    one with that database. HypoFuzz requires a test's database to be this default one.

    Returns:
        The database (None for ``"none"``).
    """
    from hypothesis import settings

    database = parse_database(text)
    if database == "profile":
        return settings.default.database
    settings.register_profile("jacverify-database", parent=settings.default, database=database)
    settings.load_profile("jacverify-database")
    return database
