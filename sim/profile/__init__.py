"""Timing profiles: stage costs the simulator charges (analytic roofline or measured on a GPU)."""

from sim.profile.analytic import AnalyticProfile
from sim.profile.base import AttentionLoad, Overheads, Profile
from sim.profile.scaled import ScaledProfile

__all__ = ["AnalyticProfile", "AttentionLoad", "Overheads", "Profile", "ScaledProfile"]
