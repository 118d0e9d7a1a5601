"""Profile-grid warnings summed up over many simulations (sim.validate, sim.tracecmp): each simulation builds its
own profile, which warns once per stage, so two dozen runs printed two dozen near-identical warnings that buried
the table. Here they become one line per stage at the end: how often it warned (each of a stage's curves
warns once per simulation) and the range of what was looked up."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from sim.profile.measured import GridWarning


@dataclass
class GridNotes:
    """Per stage: how many warnings and the smallest and largest value looked up outside the grid."""

    seen: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    def add(self, warning: GridWarning) -> None:
        count, low, high = self.seen.get(warning.stage, (0, warning.value, warning.value))
        self.seen[warning.stage] = (count + 1, min(low, warning.value), max(high, warning.value))

    def lines(self, of: int) -> list[str]:
        return [f"note: profile stage {stage}: looked up outside its measured grid ({low:g} to {high:g}), warned "
                f"{count} times over {of} simulations (below a grid its first point is used, above it extrapolated)"
                for stage, (count, low, high) in sorted(self.seen.items())]


@contextmanager
def gathered(of: int, stream: TextIO | None = None) -> Iterator[GridNotes]:
    """Inside: grid warnings are kept, not shown (other warnings pass through); on leaving, one line per stage
    goes to `stream` (stderr), `of` being the number of simulations run inside."""
    notes = GridNotes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield notes
    for record in caught:
        if isinstance(record.message, GridWarning):
            notes.add(record.message)
        else:
            warnings.showwarning(record.message, record.category, record.filename, record.lineno)
    for line in notes.lines(of):
        print(line, file=stream or sys.stderr)
