"""`python -m sim run [hydra overrides]`."""

from sim.entry import dispatch

USAGE = """usage: python -m sim run [key=value ...] [-m for a multirun sweep]

examples:
  python -m sim run policy=qllm rate=7
  python -m sim run -m policy=fcfs,qllm rate=1,2,3
  python -m sim run experiment=paper policy=fcfs rate=5
  python -m sim run --cfg job        # show the composed config
"""


def entry() -> None:
    def load_main():
        from sim.cli import main  # imported late: `--help` must not pay for Hydra (or torch)

        return main

    dispatch(USAGE, load_main)


if __name__ == "__main__":
    entry()
