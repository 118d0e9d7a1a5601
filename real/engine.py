"""Drives decoder layers one stage at a time and stops where a scheduler may act.

A driver (the trace replayer, a benchmark, a test) does: `start(seqs)`, then `advance(batch,
granularity)` until it returns True (pass complete), `finish(batch)` for the next tokens. Between
advances it may leave a batch paused (it keeps all its state), run others, `merge` two batches at
the same position, or `split` one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policies import Granularity, Position, Stage
from real import stages
from real.batch import BatchState, MoEState
from real.kv import KVPool
from real.layout import build_layout
from real.sequence import Sequence


@dataclass
class Engine:
    model: torch.nn.Module
    pool: KVPool
    grouped_experts: bool = False  # torch._grouped_mm (CUDA) instead of the eager per-expert loop

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_experts(self) -> int:
        return self.model.model.layers[0].mlp.experts.gate_up_proj.shape[0]

    @property
    def device(self) -> torch.device:
        return self.pool.k[0].device

    def add_sequence(self, seq_id: int, prompt_ids: list[int]) -> Sequence:
        if len(prompt_ids) > self.pool.max_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds the KV slot length {self.pool.max_len}")
        return Sequence(seq_id, list(prompt_ids), slot=self.pool.acquire())

    def release(self, seq: Sequence) -> None:
        self.pool.release(seq.slot)
        seq.slot = -1

    @torch.inference_mode()
    def start(self, seqs: list[Sequence]) -> BatchState:
        """A new pass at layer 0 for the tokens each sequence has not yet fed through the model."""
        ids = torch.tensor([t for s in seqs for t in s.token_ids[s.num_cached:]], device=self.device)
        return BatchState(list(seqs), stages.embed(self.model, ids), build_layout(seqs, self.device), Position())

    @torch.inference_mode()
    def advance(self, batch: BatchState, granularity: Granularity = Granularity.LAYER) -> bool:
        """Run stages up to the next scheduling point of `granularity`; True once only the LM head is left."""
        while True:
            self.step(batch, one_expert=granularity >= Granularity.EXPERT)
            if batch.position.layer >= self.num_layers:
                return True
            if batch.position.is_scheduling_point(granularity):
                return False

    @torch.inference_mode()
    def step(self, batch: BatchState, one_expert: bool = False) -> None:
        """Run the stage at the batch's position and move it on."""
        layer, stage = batch.position.layer, batch.position.stage
        if stage == Stage.ATTENTION:
            batch.hidden = stages.attention(self.model, layer, batch.hidden, batch.layout, self.pool)
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
        run = stages.experts_grouped if self.grouped_experts else stages.experts_eager
        run(self.model, layer, moe.x, moe.weights, moe.experts, queued, moe.out)
        if one_expert and e + 1 < self.num_experts:
            batch.position = Position(layer, Stage.EXPERTS, e + 1)
            return
        batch.hidden = batch.hidden + moe.out
        batch.moe = None
        batch.position = Position(layer + 1, Stage.ATTENTION)

    @torch.inference_mode()
    def finish(self, batch: BatchState) -> tuple[torch.Tensor, list[int]]:
        """LM head and greedy sampling: logits [S, V] and one new token per sequence."""
        if batch.position.layer < self.num_layers:
            raise ValueError(f"pass not complete: batch is at {batch.position}")
        logits = stages.lm_head(self.model, batch.hidden[batch.layout.last_rows])
        tokens = logits.argmax(dim=-1).tolist()
        for seq, token in zip(batch.seqs, tokens):
            seq.num_cached = len(seq.token_ids)
            seq.token_ids.append(int(token))
        return logits, tokens

    def run_pass(self, seqs: list[Sequence], granularity: Granularity = Granularity.LAYER):
        """One uninterrupted pass (prefill or decode) for `seqs`."""
        batch = self.start(seqs)
        while not self.advance(batch, granularity):
            pass
        return self.finish(batch)
