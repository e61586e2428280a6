"""The ``dkkt`` command line: ``dkkt plugins`` (and the engine's subcommands).

Every subcommand is a function ``(args) -> int``; :func:`main` parses, dispatches, and turns the
package's own errors into a one-line message with exit status 2. Library code never exits.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from . import __version__, registry
from .errors import DkktError


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every discovered component per group, loading each to report broken ones."""
    broken = 0
    groups = [args.group] if args.group else list(registry.GROUPS)
    for group in groups:
        found = registry.discover(group)
        print(f"{registry.PREFIX}{group} ({len(found)})")
        for name in sorted(found):
            comp = found[name]
            status = "ok"
            if not args.no_load:
                try:
                    comp.load()
                except DkktError as exc:
                    broken += 1
                    status = f"BROKEN: {exc.__cause__.__class__.__name__}: {exc.__cause__}"
            print(f"  {name:<20} {comp.value:<55} [{comp.distribution}] {status}")
    if broken:
        print(f"{broken} plugin(s) failed to load; see above.", file=sys.stderr)
    return 1 if broken else 0


def _add_plugins(sub) -> None:
    p = sub.add_parser("plugins", help="list the components found through entry points")
    p.add_argument("--group", choices=registry.GROUPS, help="only this group")
    p.add_argument("--no-load", action="store_true", help="read metadata only; import nothing")
    p.set_defaults(func=cmd_plugins)


# Subcommand builders; the engine adds its own here.
SUBCOMMANDS: list[Callable] = [_add_plugins]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dkkt", description="Practical dataset distillation with the Deep-KKT loss.")
    parser.add_argument("--version", action="version", version=f"dkkt-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``dkkt`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DkktError as exc:
        print(f"dkkt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dkkt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
