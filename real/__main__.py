"""`python -m real run [hydra overrides]`."""

from sim.entry import dispatch, needs_engine

USAGE = """usage: python -m real run [key=value ...]

examples:
  python -m real run policy=qllm rate=2                       # tiny random Mixtral on the CPU
  python -m real run policy=fcfs rate=5 engine.model=mixtral-8x7b engine.device=cuda engine.dtype=bfloat16 engine.num_slots=null
"""


def _main():
    from real.cli import main  # imported late: `--help` must not pay for Hydra (or torch)

    return main


def entry() -> None:
    dispatch(USAGE, lambda: needs_engine(_main))


if __name__ == "__main__":
    entry()
