"""Drives decoder layers one stage at a time and stops where a scheduler may act.

A driver (the trace replayer, a benchmark, a test) does: `add_sequence` per request, `start(seqs)`
for a pass at layer 0, then `advance(batch, granularity)` until it returns True (pass complete), and
`finish(batch)` for the next tokens (or `finish_async`, which does not wait for them: real.pending).
Between advances it may leave a batch paused (it keeps all its state: nothing to call), run others,
resume it (advance it again), `merge` a paused batch into the running one at the same position or
`split` one (real.batch); `release` frees a sequence's KV slot.

With `graphs=True`, decode batches at layer boundaries run whole layers as CUDA graphs (real.graphs), with
`pass_graphs` prefill and mixed batches too (real.passgraphs), and everything else (expert-level stepping, a layer
in which a paused batch waits between stages, a stream the engine was not warmed up on) stage by stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from policies import Granularity, Position, Stage
from real import stages, starttrace
from real.batch import BatchState, MoEState
from real.carry import DecodeCarry
from real.devicetrail import DeviceTrail
from real.graphs import KEY_STEP, DecodeRunner, fits_decode
from real.kv import KVPool
from real.layout import PinnedStaging, build_layout
from real.passgraphs import PassRunner
from real.pending import HostRing, PendingTokens
from real.pending import fill as fill_pending
from real.pending import input_ids as pending_ids
from real.sequence import Sequence

MAX_CARRIES = 8  # decode passes whose next pass `start` may derive (batches decoding side by side: a few)


@dataclass
class Engine:
    model: torch.nn.Module
    pool: KVPool
    grouped_experts: bool = False  # sync-free experts (grouped_mm; dense GEMMs for decode) instead of HF's loop
    graphs: bool = False  # decode layers through per-bucket CUDA graphs (run eagerly on CPU)
    dense_tokens: tuple[int, int] | None = None  # batches of this many tokens run all experts densely
    graph_key_step: int = KEY_STEP  # the runner's key-length rounding (real.graphs.DecodeRunner.key_step)
    # a pass's fresh prompts as one unpadded group (real.layout.PackedGroup: flash attention's varlen kernel on a
    # GPU): no padded [B, Q] index arrays to build and send at a start, no pool reads or padding in its attention
    varlen_prefill: bool = False
    # stepped attention with the pass's rotary tables made once (not per layer) and q, k rotated together: the same
    # floats in about a third fewer torch calls (a Qwen3 prefill layer's host path, 1.8-2.8 ms on an H100, is its
    # cost below ~2k tokens); not measured on a GPU yet, so off by default
    lean_attention: bool = False
    # layers of batches with prompt tokens (prefill, mixed) as CUDA graphs too (real.passgraphs; a runner per stream
    # the engine is warmed up on, built with the decode runner, so a server may switch this between runs)
    pass_graphs: bool = False
    # a pure-decode batch's next pass derived on the device from its last one (real.carry): one add and the
    # embedding instead of host arrays, a copy and the sampled ids filled in
    carry_decode: bool = False
    carries: list[DecodeCarry] = field(init=False, default_factory=list)  # the latest decode passes', newest first
    runner: DecodeRunner | None = field(init=False, default=None)
    pass_runners: dict[int, PassRunner] = field(init=False, default_factory=dict)  # by stream (`stream_key`)
    staging: PinnedStaging | None = field(init=False, default=None)  # pinned buffers for layouts (GPU only)
    token_ring: HostRing | None = field(init=False, default=None)  # pinned buffers for sampled ids (GPU only)
    stand_ins: tuple[list[Sequence], ...] = field(init=False, default=())  # `rehearse`'s batches
    # `rehearse(launch=True)`'s own stream and pinned ring (GPU only): its copies never hold up a real start's
    rehearsal: tuple[torch.cuda.Stream, PinnedStaging] | None = field(init=False, default=None)
    # an event after each piece of device work, for the stall watch's report (real.devicetrail; a run sets it)
    trail: DeviceTrail | None = field(init=False, default=None)

    def __post_init__(self):
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            self.staging = PinnedStaging.allocate(self.device)
            self.token_ring = HostRing.allocate(self.pool.num_slots)
        if self.graphs and on_cuda and not self.grouped_experts:
            raise ValueError("CUDA graphs need sync-free experts: set grouped_experts=True")
        if self.graphs:
            self.runner = DecodeRunner(self.model, self.pool, self.experts_for, capture=on_cuda,
                                       key_step=self.graph_key_step)
            self._add_pass_runner()

    @classmethod
    def for_device(cls, model, pool: KVPool) -> Engine:
        """The fast configuration on a GPU (sync-free experts, decode layers as CUDA graphs, unpadded prompts); on a
        CPU HF's own expert loop, which reproduces HF bit for bit."""
        on_cuda = pool.k[0].device.type == "cuda"
        return cls(model, pool, grouped_experts=on_cuda, graphs=on_cuda, varlen_prefill=on_cuda)

    @torch.inference_mode()
    def warm_up(self, max_batch: int) -> None:
        """Pay first-call costs before a timed run: capture every decode bucket up to `max_batch`
        sequences and run prefills and decodes of a few sizes (on the H200 the first prefills of a
        process took 0.7-1 s instead of 50-150 ms: library handles, kernel selection). On a GPU the passes run
        both padded and unpadded (`varlen_prefill`) and both with and without `lean_attention`, since a server may
        switch between runs."""
        if self.runner is not None:
            self.runner.prepare(max_batch)
            (self.pass_runner or self._add_pass_runner()).prepare()
        chosen = self.varlen_prefill, self.lean_attention
        ways = ((False, False), (True, True)) if self.device.type == "cuda" else (chosen,)
        try:
            for self.varlen_prefill, self.lean_attention in ways:
                self._warm_passes(max_batch)
        finally:
            self.varlen_prefill, self.lean_attention = chosen
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _warm_passes(self, max_batch: int) -> None:
        longest = min(self.pool.max_len - 1, 1024)
        for num_seqs, length in ((1, 8), (2, 64), (1, longest), (min(max_batch, 8), longest // 2),
                                 (min(max_batch, self.pool.num_slots), min(128, longest))):
            length = max(min(length, longest), 1)  # short KV slots (a small `engine.max_len`)
            seqs = [self.add_sequence(-1 - i, [1] * length) for i in range(min(num_seqs, self.pool.num_free))]
            self.run_pass(seqs)  # prefill (first calls of grouped GEMMs and attention at these sizes)
            self.run_pass(seqs)  # decode
            for seq in seqs:
                self.release(seq)

    @property
    def pass_runner(self) -> PassRunner | None:
        """The current stream's pass runner (one per stream the engine was warmed up on: real.passgraphs)."""
        return self.pass_runners.get(self.stream_key())

    def stream_key(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0

    def _add_pass_runner(self) -> PassRunner:
        flash = self.device.type == "cuda" and self.model.dtype in (torch.float16, torch.bfloat16)  # else: eager
        runner = PassRunner(self.model, self.pool, self.experts_for, capture=flash, staging=self.staging)
        self.pass_runners[self.stream_key()] = runner
        return runner

    def release_rows(self, batch: BatchState) -> None:
        """Before a batch leaves the current stream (an urgent one: real.lanes), its rows out of this stream's pass
        buckets, so that the stream's next batch cannot overwrite them while another stream reads them."""
        if (runner := self.pass_runner) is not None:
            runner.release(batch)

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_experts(self) -> int:
        return self.model.model.layers[0].mlp.experts.gate_up_proj.shape[0]

    @property
    def device(self) -> torch.device:
        return self.pool.k[0].device

    @property
    def default_dense_tokens(self) -> tuple[int, int]:
        """Dense experts once the batch has as many (token, expert) pairs as experts, so that most
        queues are non-empty anyway: on an H200, the measured crossover for both Mixtral (E=8, k=2:
        grouped_mm faster at 2 tokens, dense at 4) and Qwen3-30B-A3B (E=128, k=8: grouped at 8,
        dense at 32). Above 256 tokens (prefill) the extra arithmetic would cost more than it saves."""
        top_k = self.model.config.num_experts_per_tok
        return -(-self.num_experts // top_k), 256

    def experts_for(self, num_tokens: int, one_expert: bool = False):
        """The experts stage function for a batch of `num_tokens` tokens."""
        if not self.grouped_experts:
            return stages.experts_eager
        low, high = self.dense_tokens or self.default_dense_tokens
        return stages.experts_dense if low <= num_tokens <= high and not one_expert else stages.experts_grouped

    def add_sequence(self, seq_id: int, prompt_ids: list[int], prompt: np.ndarray | None = None) -> Sequence:
        """A sequence in a free KV slot (`new_sequence`, then `place`)."""
        return self.place(self.new_sequence(seq_id, prompt_ids, prompt))

    def new_sequence(self, seq_id: int, prompt_ids: list[int], prompt: np.ndarray | None = None) -> Sequence:
        """A sequence of its own copy of `prompt_ids`, without a KV slot yet: the server makes one when it admits a
        request, so that the start of its batch need not (a 30-prompt LS start spent 70 µs copying prompts, H100).
        `prompt`: the same ids as an int64 array (a pass start packs arrays, not lists)."""
        if len(prompt_ids) > self.pool.max_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds the KV slot length {self.pool.max_len}")
        if prompt is not None and len(prompt) != len(prompt_ids):
            raise ValueError(f"prompt array of {len(prompt)} ids for a prompt of {len(prompt_ids)}")
        return Sequence(seq_id, list(prompt_ids), prompt=prompt)

    def place(self, seq: Sequence) -> Sequence:
        """`seq` (from `new_sequence`) in a free KV slot."""
        if seq.slot >= 0:
            raise ValueError(f"sequence {seq.seq_id} already holds KV slot {seq.slot}")
        seq.slot = self.pool.acquire()
        return seq

    def release(self, seq: Sequence) -> None:
        self.pool.release(seq.slot)
        seq.slot = -1

    @torch.inference_mode()
    def start(self, seqs: list[Sequence]) -> BatchState:
        """A new pass at layer 0 for the tokens each sequence has not yet fed through the model (a token
        still on its way to the host is read on the device: real.pending)."""
        if self.carry_decode and (carry := self._carry_for(seqs)) is not None:
            starttrace.stamp("ids")
            layout = carry.next_layout()
            hidden = stages.embed(self.model, layout.token_ids)
            starttrace.stamp("embed")
            self._mark(lambda: f"start (carried) of {len(seqs)} seqs")
            return BatchState(list(seqs), hidden, layout, Position())
        ids, pendings = pending_ids(seqs)
        starttrace.stamp("ids")
        layout = build_layout(seqs, self.device, ids, staging=self.staging, varlen=self.varlen_prefill)
        if pendings:
            layout = replace(layout, token_ids=fill_pending(layout.token_ids, pendings))
        hidden = stages.embed(self.model, layout.token_ids)
        starttrace.stamp("embed")
        self._mark(lambda: f"start of {len(seqs)} seqs, {layout.token_ids.shape[0]} tokens")
        return BatchState(list(seqs), hidden, layout, Position())

    def _mark(self, label: Callable[[], str]) -> None:
        """A trail mark (a label made only when the trail is on: the hot path pays one check)."""
        if self.trail is not None:
            self.trail.mark(label())

    @torch.inference_mode()
    def rehearse(self, launch: bool = False) -> None:
        """A pass start for stand-in sequences, so that the real ones find their code in the CPU's caches; nothing
        the engine's batches, KV pool or pinned ring hold changes. Calls alternate between one new prompt and four.
        The server calls it while it waits for the device (engine.rehearse_us). In serving, the host work between
        starts (graph replays, the policy, the wait itself) evicts the start path from the CPU's caches: on the
        H200's host a start right after replayed graphs and a 2 ms wait took 1.3-2.4x as long as one right after
        another, 1.1-1.8x with (dry) rehearsals (`python -m real.launchprobe --cold`).
        Dry (`launch=False`, and on a CPU): the host side only (ids, layout, device views of a scratch block), no
        copy and no kernel. `launch` (a GPU): the whole start, copy, embedding and a timed event included, on a
        stream and pinned ring of the rehearsals' own, into memory nothing reads: a start's torch calls cost the
        serving host 20-30 µs each against 5-7 in a hot loop (real.starttrace), and the dry one warms none of them
        (H100: one-prompt starts 378 -> 294 µs to their first kernel, BENCHMARKS.md, session 17)."""
        if not self.stand_ins:
            self.stand_ins = ([Sequence(-1, [1] * 64, slot=0, prompt=np.ones(64, np.int64))],
                              [Sequence(-2 - i, [1] * n, slot=0, prompt=np.ones(n, np.int64))
                               for i, n in enumerate((64, 48, 32, 16))])
        seqs, *rest = self.stand_ins
        self.stand_ins = (*rest, seqs)
        ids, _ = pending_ids(seqs)
        if not launch or self.device.type != "cuda":
            build_layout(seqs, self.device, ids, staging=self.staging, dry=True, varlen=self.varlen_prefill)
            return
        if self.rehearsal is None:
            self.rehearsal = (torch.cuda.Stream(self.device, priority=-1), PinnedStaging.allocate(self.device, count=4))
        stream, staging = self.rehearsal
        with torch.cuda.stream(stream):
            layout = build_layout(seqs, self.device, ids, staging=staging, varlen=self.varlen_prefill)
            stages.embed(self.model, layout.token_ids)
            torch.cuda.Event(enable_timing=True).record()
            self._mark(lambda: "rehearsal")

    @torch.inference_mode()
    def advance(self, batch: BatchState, granularity: Granularity = Granularity.LAYER,
                stop: Callable[[Position], bool] | None = None, merge_at: tuple[Position, ...] = ()) -> bool:
        """Run stages up to the next scheduling point of `granularity`, or to an earlier stage boundary
        where `stop(position)` says so; True once only the LM head is left (at once for a batch paused
        there: the server's `head_stops`). `merge_at`: positions of paused batches this one may absorb; a layer
        holding one past its attention runs stage by stage, not as a graph, so that the batch can stop there (a
        replayed layer has no stage boundaries: an LS prefill paused inside it would wait for a resume)."""
        if batch.position.layer >= self.num_layers:
            return True
        while True:
            layer = batch.position.layer
            stepped = any(p.layer == layer and p.stage != Stage.ATTENTION for p in merge_at)
            at = batch.position
            if not stepped and self.graphed(batch, granularity):
                self.runner.run_layer(batch)
                self._mark(lambda: f"decode graph, layer {layer}, {batch.hidden.shape[0]} tokens")
            elif not stepped and self.pass_graphed(batch, granularity):
                self.pass_runner.run_layer(batch)
                self._mark(lambda: f"pass graph, layer {layer}, {batch.hidden.shape[0]} tokens")
            else:
                self.step(batch, one_expert=granularity >= Granularity.EXPERT)
                self._mark(lambda: f"{at.stage.name.lower()} layer {layer}"
                           + (f" expert {at.expert}" if at.stage == Stage.EXPERTS else "")
                           + f", {batch.hidden.shape[0]} tokens")
            if batch.position.layer >= self.num_layers:
                return True
            if batch.position.is_scheduling_point(granularity):
                return False
            if stop is not None and stop(batch.position):
                return False

    def graphed(self, batch: BatchState, granularity: Granularity = Granularity.LAYER) -> bool:
        """Whether `advance` runs the batch's next layer as a CUDA graph (the runner's static buffers)."""
        return self.runner is not None and granularity <= Granularity.LAYER and self.runner.fits(batch)

    def graphs_from_start(self, seqs: list[Sequence], granularity: Granularity = Granularity.LAYER) -> bool:
        """`graphed` for the batch `start(seqs)` would make, known before it is made (a server keeps such a batch
        off the urgent streams: real.lanes)."""
        return (self.runner is not None and granularity <= Granularity.LAYER
                and fits_decode(len(seqs), sum(s.num_new for s in seqs)))

    def pass_graphed(self, batch: BatchState, granularity: Granularity = Granularity.LAYER) -> bool:
        """Whether `advance` runs the batch's next layer through the pass runner (not a pure decode batch's)."""
        return (self.pass_graphs and granularity <= Granularity.LAYER and (runner := self.pass_runner) is not None
                and runner.fits(batch))

    @torch.inference_mode()
    def step(self, batch: BatchState, one_expert: bool = False) -> None:
        """Run the stage at the batch's position and move it on."""
        layer, stage = batch.position.layer, batch.position.stage
        if stage == Stage.ATTENTION:
            if self.lean_attention and batch.rope is None:
                batch.rope = stages.pass_rope(self.model, batch.hidden, batch.layout.positions)
            batch.hidden = stages.attention(self.model, layer, batch.hidden, batch.layout, self.pool,
                                            batch.rope if self.lean_attention else None)
            batch.position = Position(layer, Stage.ROUTER)
        elif stage == Stage.ROUTER:
            x, weights, experts = stages.router(self.model, layer, batch.hidden)
            first = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            batch.moe = MoEState(x, weights, experts, torch.zeros_like(batch.hidden), first)
            batch.position = Position(layer, Stage.EXPERTS, 0)
        else:
            self._experts(batch, one_expert)

    def _experts(self, batch: BatchState, one_expert: bool) -> None:
        layer, e = batch.position.layer, batch.position.expert
        moe = batch.moe
        start = torch.clamp(moe.first_expert, min=e)[:, None]  # [T, 1]
        queued = (moe.experts == e) & (start <= e) if one_expert else moe.experts >= start  # [T, k]
        run = self.experts_for(moe.x.shape[0], one_expert)
        run(self.model, layer, moe.x, moe.weights, moe.experts, queued, moe.out)
        if one_expert and e + 1 < self.num_experts:
            batch.position = Position(layer, Stage.EXPERTS, e + 1)
            return
        batch.hidden = batch.hidden + moe.out
        batch.moe = None
        batch.position = Position(layer + 1, Stage.ATTENTION)

    @torch.inference_mode()
    def finish(self, batch: BatchState) -> tuple[torch.Tensor, list[int]]:
        """LM head and greedy sampling: logits [S, V] and one new token per sequence (waits for them)."""
        logits, pending = self._sample(batch)
        return logits, pending.resolve()

    @torch.inference_mode()
    def finish_async(self, batch: BatchState) -> PendingTokens:
        """`finish` without waiting: the tokens reach the host once the device has run the pass
        (`PendingTokens.poll`), and a next pass of these sequences reads them on the device."""
        return self._sample(batch)[1]

    def _sample(self, batch: BatchState) -> tuple[torch.Tensor, PendingTokens]:
        if batch.position.layer < self.num_layers:
            raise ValueError(f"pass not complete: batch is at {batch.position}")
        logits = stages.lm_head(self.model, batch.hidden[batch.layout.last_rows])
        tokens = PendingTokens.issue(logits.argmax(dim=-1), batch.seqs, self.token_ring)
        self._mark(lambda: f"LM head of {len(batch.seqs)} seqs")
        if self.carry_decode and (carry := DecodeCarry.of(batch.seqs, batch.layout, tokens)) is not None:
            self.carries = [carry, *self.carries[:MAX_CARRIES - 1]]
        return logits, tokens

    def _carry_for(self, seqs: list[Sequence]) -> DecodeCarry | None:
        """The carry whose pass this one continues (taken: a pass has one next pass), if any."""
        for i, carry in enumerate(self.carries):
            if carry.matches(seqs):
                del self.carries[i]
                return carry
        return None

    def run_pass(self, seqs: list[Sequence], granularity: Granularity = Granularity.LAYER):
        """One uninterrupted pass (prefill or decode) for `seqs`."""
        batch = self.start(seqs)
        while not self.advance(batch, granularity):
            pass
        return self.finish(batch)
