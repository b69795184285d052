"""Prefix-activation caching: per-draw observation cost and SGLD step, per component, against plain passes.

    OMP_NUM_THREADS=1 python benchmarks/bench_prefix.py [--layers 6] [--hidden 256] [--device cpu]

On a GPT-NeoX with every built-in component (heads, MLPs, embed, unembed), measured side by side:
  observation ratio[c] = per-draw observation pass of component c's chains (cache warm)
                         / plain no-grad forward + loss of the whole model over the same tokens
  step ratio[c]        = SGLD step of c (forward + backward from c's first block, Langevin update)
                         / plain forward + backward (torch autograd, no update) of the same part of
                           the model: the blocks from c's first block on, head and loss
and the mean observation ratio over all components (goal <= 0.6 for 6 layers), the worst step
ratio (goal <= 1.10), and each step against a plain forward+backward of the whole model.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import timed
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from lit_susc.components import discover_components
from lit_susc.config import SGLDConfig
from lit_susc.lm import per_token_loss
from lit_susc.prefix import PrefixCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--observation-contexts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                           max_position_embeddings=args.context)
    model = GPTNeoXForCausalLM(config).to(device).eval()
    ids = lambda n: torch.randint(0, args.vocab, (n, args.context), device=device)
    observation = [ids(args.batch) for _ in range(args.observation_contexts // args.batch)]
    minibatch = ids(args.batch)
    params = dict(model.named_parameters())
    components = discover_components(model)
    print(f"GPT-NeoX {sum(p.numel() for p in params.values()) / 1e6:.1f}M params, {args.layers} layers, "
          f"{len(components)} components, {args.observation_contexts}x{args.context} observation tokens, "
          f"minibatch {args.batch}x{args.context}, device {device}, threads {torch.get_num_threads()}")

    with torch.no_grad():
        plain_obs = timed(lambda: [per_token_loss(model, b) for b in observation], device, args.repeats)

    def plain_full_step():
        model.zero_grad(set_to_none=True)
        per_token_loss(model, minibatch).mean().backward()

    for p in params.values():
        p.requires_grad_(True)
    plain_full = timed(plain_full_step, device, args.repeats)

    sgld = SGLDConfig(lr=1e-6, nbeta=10.0, localization=300.0)
    optimizer = sgld.make_optimizer(list(params.values()))
    counts = {"observation": [b.numel() for b in observation], "sampling": [minibatch.numel()]}
    rows = []
    for name, comp in components.items():
        cache = PrefixCache(model, 1 << 32, counts)
        cache.plan()
        cache.begin(comp)
        for p_name, p in params.items():
            p.requires_grad_(p_name in comp)
        optimizer.restrict({params[n]: m for n, m in comp.items()})
        with torch.no_grad():
            obs_views = [cache.view("observation", i, b) for i, b in enumerate(observation)]
            batch = cache.view("sampling", 0, minibatch)
            cached_obs = timed(lambda views=obs_views: [per_token_loss(model, v) for v in views], device, args.repeats)

        def part_step(batch=batch):
            model.zero_grad(set_to_none=True)
            per_token_loss(model, batch).mean().backward()

        def sgld_step(batch=batch):
            optimizer.zero_grad(set_to_none=True)
            per_token_loss(model, batch).mean().backward()
            optimizer.step()

        part = timed(part_step, device, args.repeats)
        step = timed(sgld_step, device, args.repeats)
        optimizer.restore_anchor()
        rows.append((name, cached_obs / plain_obs, step / part, step / plain_full))

    print(f"\n{'component':22s} {'obs/plain fwd':>14s} {'step/part f+b':>14s} {'step/full f+b':>14s}")
    for name, obs, step, full in rows:
        print(f"{name:22s} {obs:14.3f} {step:14.3f} {full:14.3f}")
    mean_obs = statistics.mean(r[1] for r in rows)
    print(f"\nmean observation ratio over {len(rows)} components: {mean_obs:.3f} (goal <= 0.6)")
    print(f"worst step ratio (SGLD step / plain f+b of the same part): {max(r[2] for r in rows):.3f} (goal <= 1.10); "
          f"median {statistics.median(r[2] for r in rows):.3f}")
    print(f"mean step / plain f+b of the whole model: {statistics.mean(r[3] for r in rows):.3f}")


if __name__ == "__main__":
    main()
