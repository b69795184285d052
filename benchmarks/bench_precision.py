"""How far bfloat16 observation passes move chi from the float32 path, on a small trained model.

    OMP_NUM_THREADS=1 python benchmarks/bench_precision.py [--model runs/quickstart/model/model]

Runs the same chains twice (same seeds, same draws: only the per-draw observation forward pass
differs, autocast to bfloat16 against float32; L_ref, the SGLD steps and the accumulators are
unchanged) and prints, per component, the Pearson correlation of the two chi vectors across
tokens and the relative L2 error ||chi_bf16 - chi_fp32|| / ||chi_fp32||, next to the same two
numbers for a float32 run with another seed (the chains' own noise, for scale).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lit_susc import ComputeConfig, SGLDConfig, estimate_susceptibilities
from lit_susc.corpus import iter_texts, make_contexts
from lit_susc.lm import per_token_loss
from lit_susc.tinylm import TinyLMConfig, load_causal_lm, train_tiny_lm


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    pearson = float(np.corrcoef(a.numpy(), b.numpy())[0, 1])
    return pearson, float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a trained causal LM directory (default: train a tiny one)")
    parser.add_argument("--components", nargs="+", default=["layers.0.heads.0", "layers.1.mlp", "layers.3.heads.2",
                                                              "embed", "unembed"])
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    path = args.model or str(train_tiny_lm("/tmp/lit-susc-bench-tiny-lm", TinyLMConfig(), progress=False))
    model, tokenizer = load_causal_lm(path)
    ids = make_contexts(tokenizer, iter_texts("stdlib"), 128, max_contexts=args.contexts + 32).input_ids
    observation, sampling = [ids[:args.contexts]], [ids[args.contexts + i:args.contexts + i + 8] for i in range(0, 32, 8)]

    def run(dtype: str, seed: int) -> torch.Tensor:
        sgld = SGLDConfig(lr=1e-3, nbeta=100.0, localization=300.0, chains=args.chains, draws=args.draws,
                          burn_in=4, seed=seed)
        return estimate_susceptibilities(model, per_token_loss, sampling, observation, components=args.components,
                                         sgld=sgld, trainer={"accelerator": "auto", "enable_progress_bar": False},
                                         compute=ComputeConfig(observation_dtype=dtype)).chi.flatten(1)

    fp32, bf16, other_seed = run("float32", 0), run("bfloat16", 0), run("float32", 1)
    print(f"\n{'component':20s} {'bf16 vs fp32: Pearson':>22s} {'rel. L2':>8s}   {'seed 1 vs seed 0: Pearson':>26s} {'rel. L2':>8s}")
    for i, name in enumerate(args.components):
        p, e = compare(bf16[i], fp32[i])
        ps, es = compare(other_seed[i], fp32[i])
        print(f"{name:20s} {p:22.4f} {e:8.3f}   {ps:26.4f} {es:8.3f}")


if __name__ == "__main__":
    main()
