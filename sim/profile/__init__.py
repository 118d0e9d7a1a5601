"""Timing profiles: stage costs the simulator charges (analytic roofline or measured on a GPU)."""

from sim.profile.analytic import AnalyticProfile
from sim.profile.base import AttentionLoad, Overheads, Profile

__all__ = ["AnalyticProfile", "AttentionLoad", "Overheads", "Profile"]
