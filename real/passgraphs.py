"""Prefill and mixed layers as CUDA graphs: one graph per (layer, bucket), a bucket being a number of rows (packed
tokens) and of sequences. A stepped prefill layer issues about 60 torch calls (Qwen3-30B-A3B, H100: a host path of
1.8-2.8 ms against 1-2 ms on the GPU below about 2,000 tokens), so layer stepping, the policies' preemption point,
made prefill host-bound. Replaying a graph costs one launch and a copy of the batch's spans per pass.

Any mix of prompts and decodes fits one static shape: attention reads each sequence's keys in place in the KV pool
(real.spans, `stages.attend_pool`), so nothing in a layer's shapes depends on prompt lengths or context. A batch
keeps its residual stream in the bucket between layers, as decode batches do (real.graphs: `hold`, `evict`).

A runner's graphs share one memory pool, which admits one replay at a time, so each stream a batch may run on (the
main one, and the urgent ones of real.lanes) has a runner of its own (`Engine.pass_runners`), and a batch that
leaves an urgent stream takes its rows out of that runner's buckets first (`release`). On the CPU the same code runs
eagerly (tests check it against Hugging Face).

Shapes: R = bucket rows, N = bucket sequences, D = hidden, k = experts per token.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from policies import Position, Stage
from real import stages
from real.batch import BatchState
from real.graphs import capture_layers, evict, hold
from real.kv import KVPool
from real.layout import Layout, PinnedStaging
from real.spans import PoolSpans, block_size, host_spans

ROW_SIZES = (32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
SEQ_SIZES = (4, 16, 64)  # flash attention's grid spans every bucket sequence, so few-sequence batches get small ones


@dataclass(eq=False)
class PassBucket:
    hidden: torch.Tensor  # [R, D]
    block: torch.Tensor  # [block_size] int64: what `spans` views, written by one copy per batch layout
    spans: PoolSpans
    rows: torch.Tensor  # [R] 0..R-1
    graphs: list = field(default_factory=list)  # one torch.cuda.CUDAGraph per layer (empty on CPU)
    holder: BatchState | None = None
    loaded: Layout | None = None  # the batch layout whose spans are in `block`


@dataclass(eq=False)
class PassRunner:
    """Runs whole layers of batches holding prompt tokens, at layer boundaries, in padded buckets."""

    model: torch.nn.Module
    pool: KVPool
    experts_for: Callable[[int], Callable]  # bucket rows -> experts stage function
    capture: bool  # CUDA graphs (on CUDA) or the same static-shape code run eagerly
    staging: PinnedStaging | None = None  # the engine's pinned buffers (GPU)
    buckets: dict[tuple[int, int], PassBucket] = field(default_factory=dict)
    mempool: object = None

    @property
    def num_graphs(self) -> int:
        return sum(len(b.graphs) for b in self.buckets.values())

    def fits(self, batch: BatchState) -> bool:
        """At a layer boundary, within the largest bucket."""
        return (batch.position.stage == Stage.ATTENTION and batch.layout.num_tokens <= ROW_SIZES[-1]
                and len(batch.seqs) <= SEQ_SIZES[-1])

    def release(self, batch: BatchState) -> None:
        """The batch's rows out of any bucket holding them (a copy on the current stream), so that the bucket may be
        overwritten by this runner's next batch while the batch goes on elsewhere."""
        for bucket in self.buckets.values():
            if bucket.holder is batch:
                evict(bucket)

    @torch.inference_mode()
    def prepare(self) -> int:
        """Build (capture) every bucket before timed work; returns how many exist."""
        for key in ((rows, seqs) for rows in ROW_SIZES for seqs in SEQ_SIZES):
            if key not in self.buckets:
                self.buckets[key] = self._new_bucket(*key)
        return len(self.buckets)

    def run_layer(self, batch: BatchState) -> None:
        """Layer `batch.position.layer` for the whole batch; the batch moves to the next layer."""
        key = (ROW_SIZES[bisect_left(ROW_SIZES, batch.layout.num_tokens)],
               SEQ_SIZES[bisect_left(SEQ_SIZES, len(batch.seqs))])
        if key not in self.buckets:
            self.buckets[key] = self._new_bucket(*key)
        bucket = self.buckets[key]
        self._load(bucket, batch)
        layer = batch.position.layer
        if bucket.graphs:
            bucket.graphs[layer].replay()
        else:
            self._layer(bucket, layer)
        batch.position = Position(layer + 1, Stage.ATTENTION)

    def _new_bucket(self, num_rows: int, num_seqs: int) -> PassBucket:
        device = self.pool.k[0].device
        config = self.model.config
        block = torch.zeros(block_size(num_rows, num_seqs), dtype=torch.long, device=device)
        block.copy_(torch.from_numpy(host_spans([], num_rows, num_seqs, self.pool.max_len, self.pool.scratch_slot)))
        spans = PoolSpans.over(block, num_rows, num_seqs)
        rows = torch.arange(num_rows, device=device)
        hidden = torch.zeros(num_rows, config.hidden_size, device=device, dtype=self.model.dtype)
        bucket = PassBucket(hidden, block, spans, rows)
        if self.capture:
            self._capture(bucket)
        return bucket

    def _layer(self, bucket: PassBucket, layer: int) -> None:
        run_experts = self.experts_for(bucket.hidden.shape[0])
        top_k = self.model.config.num_experts_per_tok
        queued = (bucket.rows < bucket.spans.cu_queries[-2]).unsqueeze(1).expand(-1, top_k)  # [R, k]: not padding
        out = stages.layer_pooled(self.model, layer, bucket.hidden, bucket.spans, self.pool, run_experts, queued)
        bucket.hidden.copy_(out)

    def _capture(self, bucket: PassBucket) -> None:
        """All the runner's graphs in one memory pool (a new bucket's rows are all padding: the warm-up's writes go
        to the scratch slot)."""
        if self.mempool is None:
            self.mempool = torch.cuda.graph_pool_handle()
        bucket.graphs = capture_layers(partial(self._layer, bucket), self.model.config.num_hidden_layers, self.mempool)

    def _load(self, bucket: PassBucket, batch: BatchState) -> None:
        """The batch's residual stream and spans into the bucket unless they are there already."""
        hold(bucket, batch)
        if bucket.loaded is batch.layout:
            return
        num_rows, num_seqs = bucket.hidden.shape[0], bucket.spans.used.shape[0] - 1
        host = host_spans(batch.seqs, num_rows, num_seqs, self.pool.max_len, self.pool.scratch_slot)
        if self.staging is not None:
            self.staging.send_into(host, bucket.block)
        else:
            bucket.block.copy_(torch.from_numpy(host))
        bucket.loaded = batch.layout
