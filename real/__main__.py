"""`python -m real run [hydra overrides]`."""

import sys

USAGE = """usage: python -m real run [key=value ...]

examples:
  python -m real run policy=qllm rate=2                       # tiny random Mixtral on the CPU
  python -m real run policy=fcfs rate=5 engine.model=mixtral-8x7b engine.device=cuda engine.dtype=bfloat16 engine.num_slots=null
"""


def entry() -> None:
    if len(sys.argv) < 2 or sys.argv[1] != "run":
        print(USAGE, file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    sys.argv = [f"{sys.argv[0]} run", *sys.argv[2:]]
    from real.cli import main

    main()


if __name__ == "__main__":
    entry()
