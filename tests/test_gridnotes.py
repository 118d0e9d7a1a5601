"""sim.gridnotes: many simulations' grid warnings summed up in one line per stage; other warnings pass through."""

from __future__ import annotations

import io
import warnings

import pytest

from sim.gridnotes import gathered
from sim.profile.measured import GridWarning


def test_grid_warnings_become_one_line_per_stage_and_others_pass_through():
    out = io.StringIO()
    with pytest.warns(DeprecationWarning, match="something else"):
        with gathered(3, out) as notes:
            for value in (40.0, 64.0, 8.0):
                warnings.warn(GridWarning("attention_decode", value, above=value > 32))
            warnings.warn(GridWarning("router", 9000.0, above=True))
            warnings.warn("something else", DeprecationWarning)
    assert notes.seen == {"attention_decode": (3, 8.0, 64.0), "router": (1, 9000.0, 9000.0)}
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("note: profile stage attention_decode: looked up outside its measured grid (8 to 64)")
    assert "warned 3 times over 3 simulations" in lines[0] and "router" in lines[1]


def test_nothing_is_printed_without_grid_warnings():
    out = io.StringIO()
    with gathered(5, out):
        pass
    assert out.getvalue() == ""


def test_a_grid_warning_says_what_a_lookup_below_the_grid_uses():
    assert "using its first point" in str(GridWarning("embed", 1.0, above=False))
    assert "extrapolating" in str(GridWarning("embed", 1e6, above=True))
