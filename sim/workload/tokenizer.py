"""Counting tokens with Mixtral-8x7B's tokenizer, which is Mistral-7B v0.1's 32k SentencePiece
model; `mistral-common` ships it as `tokenizer.model.v1`, so no model download is needed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

TOKENIZER_NAME = "tokenizer.model.v1"


def tokenizer_file() -> Path:
    """`tokenizer.model.v1` inside the installed `mistral-common` package."""
    try:
        root = Path(str(resources.files("mistral_common")))
    except ModuleNotFoundError as error:
        raise FileNotFoundError("the tokenizer needs the `data` extra: pip install -e '.[data]'") from error
    matches = sorted(root.rglob(TOKENIZER_NAME))
    if not matches:
        raise FileNotFoundError(f"{TOKENIZER_NAME} not found under {root}")
    return matches[0]


def load_tokenizer(path: str | Path | None = None):
    """A `sentencepiece.SentencePieceProcessor`: Mixtral's (`tokenizer_file()`), or the model file at `path`."""
    import sentencepiece

    path = Path(path) if path is not None else tokenizer_file()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} not found")
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def count_tokens(tokenizer, prompt: str, reply: str) -> tuple[int, int]:
    """Prompt tokens with BOS (a Mixtral prompt starts with it, so it costs prefill work and KV);
    reply tokens without BOS or EOS (the tokens the model generates before stopping)."""
    return len(tokenizer.encode(prompt, add_bos=True)), len(tokenizer.encode(reply))
