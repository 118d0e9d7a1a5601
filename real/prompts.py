"""The prompt token ids a replay feeds for a trace's request: random, fixed by (seed, request id), so a run and
its twin (the simulator knows only lengths; `real.loadgen` posts the same prompts over HTTP) see the same
input. Free of torch: a load generator needs none."""

from __future__ import annotations

import numpy as np


def prompt_ids(seed: int, vocab_size: int, request_id: int, length: int) -> list[int]:
    return np.random.default_rng([seed, request_id]).integers(3, vocab_size, size=length).tolist()
