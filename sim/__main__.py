"""`python -m sim run [hydra overrides]`."""

import sys

USAGE = """usage: python -m sim run [key=value ...] [-m for a multirun sweep]

examples:
  python -m sim run policy=qllm rate=7
  python -m sim run -m policy=fcfs,qllm rate=1,2,3
  python -m sim run experiment=paper policy=fcfs rate=5
  python -m sim run --cfg job        # show the composed config
"""


def entry() -> None:
    if len(sys.argv) < 2 or sys.argv[1] != "run":
        print(USAGE, file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    sys.argv = [f"{sys.argv[0]} run", *sys.argv[2:]]
    from sim.cli import main

    main()


if __name__ == "__main__":
    entry()
