"""Accuracy of the engine at full width on a GPU, where bf16 makes "equal to HF" meaningless: every
bf16 implementation (ours, HF eager, HF grouped_mm) is compared with an fp32 forward of the same
weights, and the engine in fp32 with HF in fp32. Random full-depth models amplify rounding layer
after layer, so a few layers (`--layers`) keep the comparison informative.

`python -m real.accuracy --model mixtral-8x7b --layers 4 --out DIR`
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from policies import Granularity
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config

FORCED = 7  # the decode step's input token, the same for every implementation


def engine_decode_logits(model, settings: dict, prompts: torch.Tensor) -> torch.Tensor:
    """Prefill, then one layer-stepped decode pass of `FORCED`: logits [S, V] (float32)."""
    pool = KVPool.allocate_for(model.config, len(prompts), prompts.shape[1] + 8, model.device, model.dtype)
    engine = Engine(model, pool, **settings)
    seqs = [engine.add_sequence(i, row.tolist()) for i, row in enumerate(prompts)]
    engine.run_pass(seqs)
    for seq in seqs:
        seq.token_ids[-1] = FORCED
    return engine.run_pass(seqs, Granularity.LAYER)[0]


@torch.inference_mode()
def hf_decode_logits(model, prompts: torch.Tensor, impl: str) -> torch.Tensor:
    model.set_experts_implementation(impl)
    ids = torch.cat([prompts, torch.full((len(prompts), 1), FORCED)], dim=1).to(model.device)
    return model(ids, logits_to_keep=1).logits[:, -1].float()


def compare(logits: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    err = (logits - ref).abs()
    return {"max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()),
            "rel_max_err": float(err.max() / ref.abs().max()),
            "top1_agree": float((logits.argmax(-1) == ref.argmax(-1)).float().mean())}


def run(args) -> dict:
    config = preset_config(args.model, **({"num_hidden_layers": args.layers} if args.layers else {}))
    model = build_model(config, args.device, torch.bfloat16)
    fp32 = copy.deepcopy(model).float()
    prompts = torch.randint(3, config.vocab_size, (args.batch, args.length), generator=torch.Generator().manual_seed(1))
    ref = hf_decode_logits(fp32, prompts, "eager")
    candidates = {
        "bf16 engine (graphs, dense experts)": engine_decode_logits(model, {"grouped_experts": True, "graphs": True}, prompts),
        "bf16 engine (graphs, grouped_mm)": engine_decode_logits(
            model, {"grouped_experts": True, "graphs": True, "dense_tokens": (0, 0)}, prompts),
        "bf16 engine (HF's eager expert loop)": engine_decode_logits(model, {}, prompts),
        "bf16 HF eager": hf_decode_logits(model, prompts, "eager"),
        "bf16 HF grouped_mm": hf_decode_logits(model, prompts, "grouped_mm"),
        "fp32 engine (graphs, dense experts)": engine_decode_logits(
            fp32, {"grouped_experts": True, "graphs": True, "dense_tokens": (1, 256)}, prompts),
        "fp32 engine (HF's eager expert loop)": engine_decode_logits(fp32, {}, prompts),
    }
    out = {name: compare(logits, ref) for name, logits in candidates.items()}
    out["reference"] = {"impl": "fp32 HF eager, same weights", "logit_scale": float(ref.abs().max()),
                        "model": args.model, "layers": config.num_hidden_layers, "batch": args.batch,
                        "prompt_tokens": args.length, "torch": torch.__version__,
                        "transformers": __import__("transformers").__version__}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    out = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(out, indent=2))
    for name, row in out.items():
        print(f"{name:40s} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
