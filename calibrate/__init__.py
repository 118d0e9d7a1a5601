"""Measuring stage timing profiles on a GPU with the real engine's own stage functions."""
