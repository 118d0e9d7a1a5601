"""Discrete-event simulator of one GPU serving an MoE model under a scheduling policy."""
