"""The `python -m <package> run [overrides]` front door shared by `sim` and `real` (`real serve` too)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
ENGINE_MODULES = ("torch", "transformers")


def dispatch(usage: str, load_main: Callable[[], Callable[[], None]],
             more: dict[str, Callable[[], Callable[[], None]]] | None = None) -> None:
    """Accept the `run` subcommand (and those in `more`), then hand the remaining arguments to its Hydra main."""
    commands = {"run": load_main, **(more or {})}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(usage, file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    command = sys.argv[1]
    sys.argv = [f"{sys.argv[0]} {command}", *sys.argv[2:]]
    commands[command]()()


def needs_engine(load: Callable[[], T]) -> T:
    """`load()`, or a one-line error (exit 2) where the engine's packages are not installed."""
    try:
        return load()
    except ModuleNotFoundError as error:
        if error.name not in ENGINE_MODULES:
            raise
        print(f"error: this command needs {error.name}: pip install -e '.[engine]'", file=sys.stderr)
        sys.exit(2)
