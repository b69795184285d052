"""Batched chains: wall time of the same chains stepped one at a time and as one vmapped batch.

    OMP_NUM_THREADS=1 python benchmarks/bench_batched.py [--hidden 128] [--layers 4] [--chains 4] [--device cpu]

Runs every component of a small GPT-NeoX with ``compute.batch_chains`` 1 and ``--chains``, the
same seeds and data, through the real Trainer, and prints the wall times, their ratio and the
largest relative difference of chi between the two (float32 rounding only). Batching pays off
where one small chain leaves the device idle (GPUs); on a CPU core the matmuls are already large
enough, and PyTorch has no vmap rule for CPU flash attention (it loops over the chains).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from lit_susc import ComputeConfig, SGLDConfig, estimate_susceptibilities
from lit_susc.lm import per_token_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=2048, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=4, intermediate_size=4 * args.hidden,
                           max_position_embeddings=args.context)
    model = GPTNeoXForCausalLM(config).eval()
    ids = lambda: torch.randint(0, 2048, (8, args.context))
    sampling, observation = [ids() for _ in range(4)], [ids() for _ in range(2)]
    results = {}
    for batch_chains in (1, args.chains):
        start = time.perf_counter()
        results[batch_chains] = estimate_susceptibilities(
            model, per_token_loss, sampling, observation, components=["*"],
            sgld=SGLDConfig(lr=1e-4, nbeta=30.0, chains=args.chains, draws=args.draws, burn_in=2),
            compute=ComputeConfig(batch_chains=batch_chains),
            trainer={"accelerator": args.device, "enable_progress_bar": False}).chi
        results[batch_chains] = (results[batch_chains], time.perf_counter() - start)
    (alone, t1), (batched, tk) = results[1], results[args.chains]
    diff = float(((batched - alone).abs().amax(dim=1) / alone.abs().amax(dim=1)).max())
    print(f"\n{args.chains} chains x every component, {args.draws} draws: one at a time {t1:.1f} s, "
          f"batched {tk:.1f} s, ratio {t1 / tk:.2f}x; max relative difference of chi {diff:.1e}")


if __name__ == "__main__":
    main()
