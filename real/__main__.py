"""`python -m real run|serve [hydra overrides]`."""

from sim.entry import dispatch, needs_engine

USAGE = """usage: python -m real run [key=value ...]     replay a trace on the real engine
       python -m real serve [key=value ...]   serve it over HTTP (OpenAI /v1/completions + `priority`)

examples:
  python -m real run policy=qllm rate=2                       # tiny random Mixtral on the CPU
  python -m real run policy=fcfs rate=5 engine.model=mixtral-8x7b engine.device=cuda engine.dtype=bfloat16 engine.num_slots=null
  python -m real serve policy=qllm port=8000                  # tiny model: send prompts as token ids
"""


def _main():
    from real.cli import main  # imported late: `--help` must not pay for Hydra (or torch)

    return main


def _serve_main():
    from real.servecli import main

    return main


def entry() -> None:
    dispatch(USAGE, lambda: needs_engine(_main), {"serve": lambda: needs_engine(_serve_main)})


if __name__ == "__main__":
    entry()
