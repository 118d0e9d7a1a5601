"""The `python -m <package> run [overrides]` front door shared by `sim` and `real`."""

from __future__ import annotations

import sys
from collections.abc import Callable


def dispatch(usage: str, load_main: Callable[[], Callable[[], None]]) -> None:
    """Accept only the `run` subcommand, then hand the remaining arguments to the Hydra main."""
    if len(sys.argv) < 2 or sys.argv[1] != "run":
        print(usage, file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    sys.argv = [f"{sys.argv[0]} run", *sys.argv[2:]]
    load_main()()
