"""Does the urgent lane (real.lanes) change any result, and how soon does a preempting batch start?

On a GPU, a decode batch of `--be` sequences (CUDA-graph layers) has `--queued` layers issued when an LS
prefill of `--ls` prompts starts. Three variants:
- `alone`: the BE pass, then the LS pass, nothing overlapping (the reference logits);
- `main`: the LS prefill issued on the main stream, behind the queued layers (no lane);
- `lane`: the LS prefill issued on the urgent stream, the lane as the server uses it.
Each checks both batches' logits against `alone`, and times from the LS batch's issue (an event on the idle
urgent stream): its first stage (embedding) done, its pass done, the queued BE layers done, the BE pass done.

`python -m real.lanecheck --model mixtral-8x7b --layers 8 --out DIR`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import median

import torch

from real.engine import Engine
from real.kv import KVPool
from real.lanes import PriorityLane, urgent_streams, warm_up
from real.model import build_model, preset_config
from real.sequence import Sequence

VARIANTS = ("alone", "main", "lane")


def _event(stream: torch.cuda.Stream) -> torch.cuda.Event:
    event = torch.cuda.Event(enable_timing=True)
    event.record(stream)
    return event


@torch.inference_mode()
def trial(engine: Engine, be_seqs: list[Sequence], ls_seqs: list[Sequence], queued: int, variant: str) -> dict:
    """One BE decode pass and one LS prefill pass in `variant`; the sequences are restored afterwards."""
    saved = [(s, len(s.token_ids), s.num_cached) for s in be_seqs + ls_seqs]
    main = torch.cuda.current_stream(engine.device)
    lane = PriorityLane(urgent_streams(engine.device), enabled=variant != "main")
    urgent = lane.streams[0]  # the level a batch preempting the main stream claims
    torch.cuda.synchronize(engine.device)
    be = engine.start(be_seqs)
    for _ in range(engine.num_layers if variant == "alone" else queued):
        engine.advance(be)
    be_queued = _event(main)
    if variant == "alone":
        be_logits, _ = engine.finish(be)
    zero = _event(urgent)  # the LS batch's issue, on the device clock
    lane.claim(-1, busy_levels={0})
    with lane.issue(-1):
        ls = engine.start(ls_seqs)
        first = _event(torch.cuda.current_stream(engine.device))
        while not engine.advance(ls):
            pass
        ls_done = _event(torch.cuda.current_stream(engine.device))
        ls_logits, _ = engine.finish(ls)
    lane.join(ls)
    if variant != "alone":
        while not engine.advance(be):
            pass
        be_logits, _ = engine.finish(be)
    be_done = _event(main)
    torch.cuda.synchronize(engine.device)
    for seq, length, cached in saved:
        del seq.token_ids[length:]
        seq.num_cached = cached
    ms = zero.elapsed_time
    return {"variant": variant, "ls_first_stage_ms": ms(first), "ls_pass_ms": ms(ls_done),
            "be_queued_done_ms": ms(be_queued), "be_pass_done_ms": ms(be_done),
            "ls_logits": ls_logits.cpu(), "be_logits": be_logits.cpu()}


def run(args) -> list[dict]:
    config = preset_config(args.model, num_hidden_layers=args.layers)
    model = build_model(config, "cuda", torch.bfloat16)
    max_len = -(-(max(args.be_tokens, args.ls_tokens) + 8) // 256) * 256
    pool = KVPool.allocate_for(config, args.be + args.ls, max_len, "cuda", torch.bfloat16)
    engine = Engine.for_device(model, pool)
    engine.warm_up(args.be)
    warm_up(engine, args.be)
    gen = torch.Generator().manual_seed(0)
    prompt = lambda n: torch.randint(3, config.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
    be_seqs = [engine.add_sequence(i, prompt(args.be_tokens)) for i in range(args.be)]
    ls_seqs = [engine.add_sequence(1000 + i, prompt(args.ls_tokens)) for i in range(args.ls)]
    engine.run_pass(be_seqs)  # BE prefill: the trials decode them
    rows = []
    for repeat in range(args.repeats + 1):  # the first round warms up
        for variant in VARIANTS:
            row = trial(engine, be_seqs, ls_seqs, args.queued, variant)
            if repeat:
                rows.append(row)
    first = next(r for r in rows if r["variant"] == "alone")
    reference = {name: first[f"{name}_logits"].float() for name in ("ls", "be")}
    for row in rows:
        for name in ("ls", "be"):
            diff = (row.pop(f"{name}_logits").float() - reference[name]).abs().max()
            row[f"{name}_max_abs_diff"] = float(diff)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per variant: median times, and the largest logit difference from the reference."""
    out = []
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        med = {k: median(r[k] for r in mine) for k in mine[0] if k.endswith("_ms")}
        worst = {k: max(r[k] for r in mine) for k in mine[0] if k.endswith("_diff")}
        out.append({"variant": variant, "repeats": len(mine), **med, **worst})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mixtral-8x7b", choices=["mixtral-8x7b", "qwen3-moe-30b-a3b"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--be", type=int, default=32, help="BE decode sequences")
    parser.add_argument("--be-tokens", type=int, default=128)
    parser.add_argument("--ls", type=int, default=4, help="LS prompts in the preempting prefill")
    parser.add_argument("--ls-tokens", type=int, default=256)
    parser.add_argument("--queued", type=int, default=6, help="BE layers issued before the LS batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    if not 0 < args.queued < args.layers:
        parser.error("--queued must be between 1 and --layers - 1")
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    table = summary(rows)
    (args.out / "lanecheck.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "device": torch.cuda.get_device_name(),
                                                         "rows": rows, "summary": table}, indent=2))
    for row in table:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
