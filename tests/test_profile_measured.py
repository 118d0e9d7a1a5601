"""Measured profiles: loading, interpolation, extrapolation warning, malformed files rejected."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.profile.base import AttentionLoad
from sim.profile.measured import MeasuredProfile, MeasuredProfileError
from sim.profile.select import ProfileError, ProfileSpec, build_profile
from sim.hardware import HardwareSpec
from sim.model import ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def synthetic(tmp_path: Path, **edits) -> Path:
    """A profile where each stage costs 1 ms + 1 us per unit of x1 (+ 2 us per unit of x2)."""
    rows = []
    for stage, pts in {"attention_decode": [(b, c) for b in (1, 4, 16) for c in (100, 1000)],
                       "attention_prefill": [(n, p) for n in (1, 4) for p in (10, 100)],
                       "router": [(t, 0) for t in (1, 10, 100)], "expert": [(t, 0) for t in (1, 10, 100)],
                       "experts_layer": [(t, 0) for t in (1, 10, 100)], "lm_head": [(n, 0) for n in (1, 10, 100)]}.items():
        for x1, x2 in pts:
            for r in range(3):
                rows.append({"stage": stage, "x1": x1, "x2": x2, "split": "grid", "repeat": r,
                             "time_s": 1e-3 + 1e-6 * x1 + 2e-6 * x2 + 1e-7 * r})
    table = pd.DataFrame(rows)
    for column, value in edits.items():
        table.loc[0, column] = value
    tmp_path.mkdir(exist_ok=True)
    table.to_csv(tmp_path / "stages.csv", index=False)
    return tmp_path


def test_interpolates_between_grid_points(tmp_path):
    p = MeasuredProfile(synthetic(tmp_path))
    assert p.router_s(10) == pytest.approx(1e-3 + 10e-6 + 1e-7)
    assert 1e-3 + 10e-6 < p.router_s(30) < 1e-3 + 100e-6  # between its neighbours
    decode = p.attention_s(AttentionLoad(num_decode_seqs=4, decode_ctx_tokens=4 * 100))
    assert decode == pytest.approx(1e-3 + 4e-6 + 200e-6 + 1e-7)
    loads = np.array([[10, 10, 0, 0]])  # 10 tokens x top-2 -> the layer's grouped time, split by load
    assert p.experts_s(loads).sum() == pytest.approx(1e-3 + 10e-6 + 1e-7)
    assert p.experts_s(loads)[0, 2] == 0


def test_warns_when_extrapolating(tmp_path):
    p = MeasuredProfile(synthetic(tmp_path))
    with pytest.warns(UserWarning, match="outside the measured grid"):
        beyond = p.router_s(1000)
    assert beyond == pytest.approx(1e-3 + 1000e-6 + 1e-7, rel=1e-3)  # linear past the top
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.router_s(1000)  # warned once per stage, not on every call


@pytest.mark.parametrize("edit,message", [
    ({"time_s": -1.0}, "non-positive"), ({"stage": "warp_drive"}, "unknown stage"), ({"x1": np.nan}, "empty"),
])
def test_malformed_profiles_are_rejected(tmp_path, edit, message):
    with pytest.raises(MeasuredProfileError, match=message):
        MeasuredProfile(synthetic(tmp_path, **edit))


def test_missing_profile_gives_a_clear_error(tmp_path):
    spec = ProfileSpec(kind="measured", directory=str(tmp_path / "nowhere"))
    with pytest.raises(ProfileError, match="no profile at"):
        build_profile(spec, ModelSpec(), HardwareSpec())


def test_committed_h200_profile_loads_by_name():
    profile = build_profile(ProfileSpec(kind="measured"), ModelSpec(), HardwareSpec(name="h200"))
    assert profile.name == "measured/h200/mixtral-8x7b-bf16"
    assert 0 < profile.attention_s(AttentionLoad(num_decode_seqs=32, decode_ctx_tokens=32 * 512)) < 0.1
