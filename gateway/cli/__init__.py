"""The ``gateway`` command. One module per command group; this one lists them and parses the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import metadata

from gateway import __version__
from gateway.cli import dlq, keys, review, rollout, serve, spend, teams
from gateway.cli.common import add_log_format
from gateway.observability.applog import ENV, configure_logging, log_format

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

# name -> (one-line help, configure the subparser, run it and return the exit code)
COMMANDS: dict[str, tuple[str, Configure, Run]] = {
    "serve": ("run the gateway", serve.configure_serve, serve.serve),
    "validate": ("check policy files; prints ok or one line per problem", serve.configure_validate, serve.validate),
    "dlq": ("look at, re-send or discard dead-lettered requests", dlq.configure, dlq.run),
    "spend": ("spend and budgets of a running gateway, from its admin API", spend.configure, spend.run),
    "rollout": ("a running gateway's rollouts; reset a tripped canary", rollout.configure, rollout.run),
    "keys": ("create, list, show, rotate and revoke managed keys of a running gateway", keys.configure, keys.run),
    "teams": ("create, list, show and delete teams of a running gateway", teams.configure, teams.run),
    "review": ("the human-review queue and the feedback sent to /v1/feedback", review.configure, review.run),
}


def version() -> str:
    """The installed distribution's version; the package's own when it runs from a checkout."""
    try:
        return metadata.version("llm-gateway")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="A policy-driven LLM gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {version()}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    add_log_format(parser, f"text (default) or json lines on stderr; default: ${ENV} or text")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, log_format(args.log_format))
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
