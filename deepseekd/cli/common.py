"""What every ``deepseekd`` command shares: settings, one service call, the parser's
building blocks, and the one-line error."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from deepseekd.config import Settings, load_settings

if TYPE_CHECKING:
    from deepseekd.services.container import Services

T = TypeVar("T")


class CliError(Exception):
    """A problem the user can fix; printed as ``deepseekd: <message>``."""


def settings_of(args: argparse.Namespace) -> Settings:
    path = getattr(args, "config", None)  # accepted before or after the subcommand
    return load_settings(Path(path) if path else None)


def say(message: str) -> None:
    print(f"deepseekd: {message}", file=sys.stderr)


def with_services(args: argparse.Namespace, call: Callable[[Services], Awaitable[T]]) -> T:
    """Run one service call on a database at head, opened with the right master key."""
    from deepseekd.services.container import open_services
    from deepseekd.services.setup import require_initialised

    settings = settings_of(args)
    require_initialised(settings)

    async def run() -> T:
        async with open_services(settings) as svc:
            return await call(svc)

    return asyncio.run(run())


Arg = tuple[tuple[str, ...], dict[str, Any]]


def arg(*flags: str, **options: Any) -> Arg:
    return flags, options


def command(
    sub: Any,
    common: argparse.ArgumentParser,
    name: str,
    func: Callable[..., int],
    help: str,
    *args: Arg,
    **kw: Any,
) -> argparse.ArgumentParser:
    """One (sub)command: its arguments and the function that runs it."""
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help, **kw)
    for flags, options in args:
        parser.add_argument(*flags, **options)
    parser.set_defaults(func=func)
    return parser


def group(sub: Any, common: argparse.ArgumentParser, name: str, help: str) -> Any:
    """A command with actions of its own (``deepseekd user add``)."""
    parser = sub.add_parser(name, parents=[common], help=help)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


NAME = arg("name")
JSON = arg("--json", action="store_true", help="print JSON")
