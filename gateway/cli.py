"""The ``gateway`` command: serve, validate, and the operator commands of later stages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.serve import BUNDLED_POLICY, banner, run_worker, run_workers

if TYPE_CHECKING:
    from gateway.policy.model import Policy
    from gateway.state.base import StateBackend

# Operator commands register here: name -> (configure subparser, run(args) -> exit code).
EXTRA_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def load_or_report(path: str) -> Policy | None:
    """The policy at ``path``, or None after printing each problem (``file:line: key: what``) to stderr."""
    from gateway.policy.loader import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
    return None


def run_on_backend(path: str, what: str, fn: Callable[[Policy, StateBackend], Awaitable[int]]) -> int:
    """Load the policy at ``path``, open its state backend, run ``fn``; exit 2 on a bad policy or backend."""
    import asyncio

    from gateway.state import StateError, build_backend

    policy = load_or_report(path)
    if policy is None:
        return 2

    async def main() -> int:
        backend = build_backend(policy.state)
        await backend.start()
        try:
            return await fn(policy, backend)
        finally:
            await backend.close()

    try:
        return asyncio.run(main())
    except StateError as exc:
        print(f"{what} unavailable: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    path = args.policy or str(BUNDLED_POLICY)
    policy = load_or_report(path)
    if policy is None:
        return 1
    for warning in policy.warnings:
        logging.getLogger("gateway.policy").warning("%s", warning)
    if args.workers > 1:
        print(banner(policy, args.host, args.port, args.workers), flush=True)
        return run_workers(path, args.host, args.port, args.workers)
    if not args.quiet:
        print(banner(policy, args.host, args.port, 1), flush=True)
    run_worker(policy, path, args.host, args.port, args.reuse_port)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from gateway.policy.check import main_validate

    return main_validate(args.files)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="A policy-driven LLM gateway.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--policy", help=f"policy file (default: the bundled {BUNDLED_POLICY.name})")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--worker-id", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--quiet", action="store_true", help="no start-up banner")
    serve.set_defaults(func=_serve)
    validate = sub.add_parser("validate", help="check policy files; prints ok or one line per problem")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=_validate)
    for name, (configure, run) in EXTRA_COMMANDS.items():
        module_doc = (getattr(sys.modules.get(configure.__module__), "__doc__", None) or "").strip()
        p = sub.add_parser(name, help=module_doc.splitlines()[0].replace("``", "").rstrip(".") if module_doc else None)
        configure(p)
        p.set_defaults(func=run)
    return parser


def _register_extras() -> None:
    """Import operator command modules; each adds itself to EXTRA_COMMANDS."""
    for module in ("gateway.dlq_cli", "gateway.spend_cli", "gateway.review_cli"):
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: list[str] | None = None) -> int:
    _register_extras()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
