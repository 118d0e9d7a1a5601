"""Decode layers as CUDA graphs: one graph per (layer, bucket), a bucket being a padded batch size
and a key length. A decode layer is ~30 small kernels for ~1 ms of GPU work; launched from Python
they cost more host time than the GPU needs, so a layer-steppable engine would be host-bound.
Replaying a graph costs one launch, so the engine can return to the scheduler after every layer.

A bucket owns static buffers (hidden [Bb, D], positions [Bb], slots [Bb]) that its graphs read and
write. A batch running in a bucket keeps its residual stream *in* the bucket (a view) between layers;
when another batch needs the bucket, the first one's rows are copied out (`evict`), so pausing costs
nothing until the bucket is actually shared. Padding rows have position 0 and the pool's scratch slot:
they never touch a real sequence's KV. On CPU the same code runs eagerly (tests check it).

Shapes: Bb = bucket size, B = sequences in the batch (<= Bb), D = hidden.
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
from real.kv import KVPool
from real.layout import AttentionGroup, Layout

BUCKET_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)
KEY_STEP = 256  # key lengths are rounded up to a multiple of this by default (one graph set per rounded length)


@dataclass(eq=False)
class Bucket:
    hidden: torch.Tensor  # [Bb, D]
    layout: Layout  # static: positions, slots [Bb]; one decode group over all Bb rows
    graphs: list = field(default_factory=list)  # one torch.cuda.CUDAGraph per layer (empty on CPU)
    holder: BatchState | None = None  # the batch whose residual stream lives in `hidden`
    loaded: Layout | None = None  # the batch layout whose positions and slots are in the buffers

    @property
    def size(self) -> int:
        return self.hidden.shape[0]


def fits_decode(num_seqs: int, num_tokens: int) -> bool:
    """A batch of `num_seqs` sequences feeding `num_tokens` new tokens is pure decode and has a bucket."""
    return num_seqs <= BUCKET_SIZES[-1] and num_tokens == num_seqs


@dataclass(eq=False)
class DecodeRunner:
    """Runs whole layers of pure-decode batches at layer boundaries, in padded buckets."""

    model: torch.nn.Module
    pool: KVPool
    experts_for: Callable[[int], Callable]  # bucket size -> experts stage function
    capture: bool  # CUDA graphs (on CUDA) or the same static-shape code run eagerly (CPU)
    # key lengths round up to a multiple of this: fewer graphs (batch buckets x key lengths x layers) for
    # more padded keys read per decode (engine.graph_key_step)
    key_step: int = KEY_STEP
    buckets: dict[tuple[int, int], Bucket] = field(default_factory=dict)
    mempool: object = None

    @property
    def num_graphs(self) -> int:
        """Captured graphs held (none on CPU)."""
        return sum(len(b.graphs) for b in self.buckets.values())

    def fits(self, batch: BatchState) -> bool:
        """Pure decode, at a layer boundary, not larger than the largest bucket."""
        return batch.position.stage == Stage.ATTENTION and fits_decode(len(batch.seqs), batch.layout.num_tokens)

    @torch.inference_mode()  # else autograd keeps every captured layer's intermediates alive
    def prepare(self, max_batch: int) -> int:
        """Build (capture) every bucket a batch of up to `max_batch` sequences can need, so that no
        capture happens while a timed replay runs; returns how many buckets exist."""
        sizes = BUCKET_SIZES[:bisect_left(BUCKET_SIZES, min(max_batch, BUCKET_SIZES[-1])) + 1]
        step = self.key_step
        keys = sorted({min(k, self.pool.max_len) for k in range(step, self.pool.max_len + step, step)})
        for key in ((size, num_keys) for size in sizes for num_keys in keys):
            if key not in self.buckets:
                self.buckets[key] = self._new_bucket(*key)
        return len(self.buckets)

    def run_layer(self, batch: BatchState) -> None:
        """Layer `batch.position.layer` for the whole batch; the batch moves to the next layer."""
        bucket = self._bucket(batch)
        self._load(bucket, batch)
        layer = batch.position.layer
        if bucket.graphs:
            bucket.graphs[layer].replay()
        else:
            self._layer(bucket, layer)
        batch.position = Position(layer + 1, Stage.ATTENTION)

    def _key(self, batch: BatchState) -> tuple[int, int]:
        size = BUCKET_SIZES[bisect_left(BUCKET_SIZES, len(batch.seqs))]
        context = max(s.num_cached + 1 for s in batch.seqs)
        return size, min(-(-context // self.key_step) * self.key_step, self.pool.max_len)

    def _bucket(self, batch: BatchState) -> Bucket:
        key = self._key(batch)
        if key not in self.buckets:
            self.buckets[key] = self._new_bucket(*key)
        return self.buckets[key]

    def _new_bucket(self, size: int, num_keys: int) -> Bucket:
        device = self.pool.k[0].device
        dim = self.model.config.hidden_size
        hidden = torch.zeros(size, dim, device=device, dtype=self.model.dtype)
        positions = torch.zeros(size, dtype=torch.long, device=device)
        slots = torch.full((size,), self.pool.scratch_slot, dtype=torch.long, device=device)
        rows = torch.arange(size, device=device)
        group = AttentionGroup(rows[:, None], positions[:, None], slots, rows, rows, num_keys)
        bucket = Bucket(hidden, Layout(size, positions, slots, rows, (group,)))
        if self.capture:
            self._capture(bucket)
        return bucket

    def _layer(self, bucket: Bucket, layer: int) -> None:
        run_experts = self.experts_for(bucket.size)
        out = stages.layer(self.model, layer, bucket.hidden, bucket.layout, self.pool, run_experts)
        bucket.hidden.copy_(out)

    def _capture(self, bucket: Bucket) -> None:
        """All graphs share one memory pool: they only ever run one at a time, on one stream."""
        if self.mempool is None:
            self.mempool = torch.cuda.graph_pool_handle()
        # the buckets' buffers hold padding only: the warm-up's writes go to the scratch slot
        bucket.graphs = capture_layers(partial(self._layer, bucket), self.model.config.num_hidden_layers, self.mempool)

    def _load(self, bucket: Bucket, batch: BatchState) -> None:
        """Put the batch's residual stream and metadata into the bucket unless they are there already."""
        num = len(batch.seqs)
        hold(bucket, batch)
        if bucket.loaded is not batch.layout:
            static, before = bucket.layout, bucket.loaded
            static.positions[:num].copy_(batch.layout.positions)
            # a pass carried on from the one loaded (real.carry) has its slots, so the same rows and padding
            if before is None or before.slots is not batch.layout.slots:
                static.positions[num:].zero_()
                static.slots[:num].copy_(batch.layout.slots)
                static.slots[num:].fill_(self.pool.scratch_slot)
            bucket.loaded = batch.layout



def capture_layers(run_layer: Callable[[int], None], num_layers: int, mempool) -> list:
    """One CUDA graph per layer of `run_layer(layer)`, in `mempool`, after one warm-up run of layer 0 (library
    workspaces, kernel choices); all on `capture_stream()`, the stream the graphs will replay on."""
    stream = capture_stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run_layer(0)  # eager: the stream's cuBLAS workspace comes from the ordinary allocator, not the graph's pool
    torch.cuda.current_stream().wait_stream(stream)
    graphs = []
    for layer in range(num_layers):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=mempool, stream=stream):
            run_layer(layer)
        graphs.append(graph)
    return graphs


_DEFAULT_CAPTURE: dict[int, torch.cuda.Stream] = {}  # by device: where graphs replayed on its default stream capture


def capture_stream() -> torch.cuda.Stream:
    """Where graphs that will replay on the current stream are captured: that stream itself, or for the default
    stream (where CUDA cannot capture) one side stream kept for it.

    Why it matters: a captured cuBLAS GEMM keeps the workspace of the stream it was captured on (PyTorch keys them by
    handle and stream), and `torch.cuda.graph` captures on one process-wide side stream unless told otherwise. The
    decode graphs (main stream) and an urgent lane's pass graphs then ran at the same time with one workspace: the
    likely cause of the engine stall of sessions 22-25, where cuda-gdb found a cuBLAS GEMM (`nvjet_sm90_tst_*`) that
    never finished (H100, BENCHMARKS.md). 29 replays since ran without a stall (sessions 26-27; at the earlier rate,
    1 in 7, about a 1% chance), but `python -m real.workspacecheck`, a probe of the mechanism, found no harm with its
    shapes, so the mechanism is not shown. Captured here, the graphs replayed on a stream share a workspace only with
    work on that same stream, which runs in order with them."""
    current = torch.cuda.current_stream()
    if current != torch.cuda.default_stream(current.device):
        return current
    if current.device.index not in _DEFAULT_CAPTURE:  # made once: each Stream() takes the next of PyTorch's pool
        _DEFAULT_CAPTURE[current.device.index] = torch.cuda.Stream(current.device)
    return _DEFAULT_CAPTURE[current.device.index]


def hold(bucket, batch: BatchState) -> None:
    """The batch's residual stream into the first rows of `bucket.hidden` (the rest zeroed), unless it lives there
    already; the bucket's previous holder keeps its rows (`evict`). `bucket`: any with `hidden` and `holder`."""
    if bucket.holder is not batch or batch.hidden.data_ptr() != bucket.hidden.data_ptr():
        evict(bucket)
        num = batch.hidden.shape[0]
        bucket.hidden[:num].copy_(batch.hidden)
        bucket.hidden[num:].zero_()
        batch.hidden, bucket.holder = bucket.hidden[:num], batch


def evict(bucket) -> None:
    """The holder keeps its rows: copy them out before another batch overwrites the buffer."""
    holder = bucket.holder
    if holder is not None and holder.hidden.data_ptr() == bucket.hidden.data_ptr():
        holder.hidden = holder.hidden.clone()
    bucket.holder = None
