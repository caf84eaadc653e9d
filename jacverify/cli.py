"""``jacverify ...``: the command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jacverify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="check the README's network and print the report")
    args = parser.parse_args(argv)
    if args.command == "demo":
        import jacverify
        from jacverify.examples.networks import ReadmeNet

        report = jacverify.check(ReadmeNet(), ReadmeNet.example_input())
        print(report.render(color=sys.stdout.isatty()))
        return 0 if report.passed else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
