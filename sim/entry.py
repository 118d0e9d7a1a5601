"""The `python -m <package> run [overrides]` front door shared by `sim` and `real`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
ENGINE_MODULES = ("torch", "transformers")


def dispatch(usage: str, load_main: Callable[[], Callable[[], None]]) -> None:
    """Accept only the `run` subcommand, then hand the remaining arguments to the Hydra main."""
    if len(sys.argv) < 2 or sys.argv[1] != "run":
        print(usage, file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    sys.argv = [f"{sys.argv[0]} run", *sys.argv[2:]]
    load_main()()


def needs_engine(load: Callable[[], T]) -> T:
    """`load()`, or a one-line error (exit 2) where the engine's packages are not installed."""
    try:
        return load()
    except ModuleNotFoundError as error:
        if error.name not in ENGINE_MODULES:
            raise
        print(f"error: this command needs {error.name}: pip install -e '.[engine]'", file=sys.stderr)
        sys.exit(2)
