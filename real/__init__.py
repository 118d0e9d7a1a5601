"""A layer-steppable, preemptible MoE engine on Hugging Face transformers (Mixtral, Qwen3-MoE, OLMoE).

A batch can stop before any layer or expert, keep its state, run other batches, and be resumed or
merged with another batch at the same position, with no recomputation and the same numbers as
Hugging Face's own forward pass. On a GPU, decode layers replay per-layer CUDA graphs, so returning
to the scheduler after every layer costs almost nothing (BENCHMARKS_real.md).
"""
