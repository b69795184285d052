"""How the sampler's cost per draw scales: observation tokens, components, model size; and what the
spec's Pythia-1.4B ground-truth run would cost on H200s.

    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py                      # all sweeps, CPU: ~8 min here
    python benchmarks/bench_scaling.py --sweeps models --device cuda --precision bf16-mixed \
        --models 512x6 1024x12x8 2048x24x16 --vocab 50304 --context 256 --batch 16 --obs-contexts 64
    python benchmarks/bench_scaling.py --estimate-only [--from-json benchmarks/scaling_results.json]
    python benchmarks/bench_scaling.py --smoke --device cpu                   # seconds: does it run at all

What is timed. Every configuration is a real run of the public API,
``lit_susc.estimate_susceptibilities(model, lit_susc.lm.per_token_loss, ...)`` (a Lightning fit,
all callbacks included), on a randomly initialised GPT-NeoX built from a transformers config. A
callback takes the wall time between the starts of consecutive training batches (on CUDA after a
synchronize), so each interval holds one batch's whole cost: its SGLD step, the draw when the batch
takes one, every callback's hooks (the float64 covariance folding, the traces) and the loop's own
overhead. Per configuration:

  step   fastest (``--stat min``, the default; or ``median``) of the batches without a draw (the
         first batch of each chain, which restores w* and restricts the optimizer, and the last,
         which also saves the chain's sums, are left out)
  draw   the same statistic over the batches with a draw, minus ``step``: the per-draw observation
         pass over all observation tokens + L_ref on the reference batch (= one SGLD minibatch) +
         the callbacks' folding. A chain's first draw is left out too (``first_draw_s``): with a
         prefix cache it is the one that fills the cache. ``loop_s`` (the whole loop) holds all.

Side by side, on the same model and tokens (interleaved, the same statistic of ``--repeats``): a
plain no-grad transformers forward over the observation tokens, ``per_token_loss`` alone over them (the function
the observation pass calls, without the sampler around it), and a plain forward+backward of the
whole model on one minibatch (all parameters' gradients).

FLOPs. Forward FLOPs of a context of T positions (per_token_loss's head runs on T-1 of them):

    T * (2 * P_trunk + 2 * n_layer * T * d)  +  (T-1) * 2 * P_head

P_trunk = weights of every nn.Linear in the blocks (QKV, attention output, MLP: 12 d^2 per layer);
P_head = d * vocab (the unembedding); embedding lookups and norms are not counted. The attention
term is QK^T and AV under the causal mask: 4 t d at position t, mean over t ~ 2 T d per layer
(numerically Kaplan et al. 2020's 2 n_layer n_ctx d_attn). An SGLD step is counted as forward +
backward of the minibatch = 3 x its forward FLOPs (nominal; autograd in this code skips the
weight gradients outside the component and the backward below its layer, so the real work is
less). Achieved FLOP/s = those FLOPs / measured time.

Threads. ``--threads`` (default 1 on CPU) sets torch.set_num_threads and OMP_NUM_THREADS before
torch is imported: on a small shared machine one thread gives stable numbers.

Prefix caching. The package's switch is found by signature, not by name: today it is
``estimate_susceptibilities(..., compute=ComputeConfig(prefix_cache=...))`` (lit_susc.config, on by
default); a ``prefix_cache`` argument, an ``SGLDConfig`` field or a ``SusceptibilitySampler``
argument would be found too. ``--prefix-cache both`` (what ``auto`` picks when a switch exists)
runs every configuration with it off and on; ``--compute-kwargs`` sets the compute config's other
fields (e.g. ``memory_budget_gb``). The components plot shows draw time against the component's
layer. Without a switch the flag is ignored and the results say so.

Outputs: ``--out`` (default benchmarks/scaling_results.json) and ``scaling_tokens.png``,
``scaling_components.png``, ``scaling_models.png`` in ``--plots-dir`` (default benchmarks/),
and the Pythia-1.4B estimate table on stdout (also in the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from scaling_flops import measured_rates, measured_ratios, print_estimate, pythia_estimate
from timing import pin_threads, quiet_lightning

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    """The options (``--smoke`` shrinks every size; ``--threads`` is 1 on a CPU unless given)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU, torch's choice on CUDA)")
    ap.add_argument("--precision", default="32-true",
                    help="Lightning precision of the runs (e.g. bf16-mixed: autocast bf16; baselines then autocast too)")
    ap.add_argument("--matmul-precision", default=None, choices=["highest", "high", "medium"],
                    help="torch.set_float32_matmul_precision (high: TF32 on CUDA)")
    ap.add_argument("--sweeps", nargs="+", default=["tokens", "components", "models"],
                    choices=["tokens", "components", "models"])
    ap.add_argument("--base-model", default="256x4", help="HIDDENxLAYERS[xHEADS] of the tokens and components sweeps")
    ap.add_argument("--models", nargs="+", default=["128x2", "256x4", "512x6"], help="model-size sweep")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="contexts per SGLD minibatch (and in the reference batch)")
    ap.add_argument("--obs-batch", type=int, default=32, help="contexts per observation forward")
    ap.add_argument("--token-contexts", type=int, nargs="+", default=[8, 16, 32, 64],
                    help="tokens sweep: observation contexts (each gives context-1 tokens)")
    ap.add_argument("--component-counts", type=int, nargs="+", default=[1, 4, 16, 0],
                    help="components sweep: how many, evenly spread over the model's list (0: all)")
    ap.add_argument("--component-obs-contexts", type=int, default=8, help="observation contexts, components sweep")
    ap.add_argument("--obs-contexts", type=int, default=16, help="observation contexts, models sweep")
    ap.add_argument("--component", default="layers.{mid}.mlp",
                    help="the component of the tokens and models sweeps ({mid} = n_layers // 2)")
    ap.add_argument("--draws", type=int, default=6,
                    help="draws per chain, tokens and models sweeps (>= 4: the first fills a prefix cache, the last "
                         "also saves the chain)")
    ap.add_argument("--component-draws", type=int, default=4, help="draws per chain, components sweep (>= 4)")
    ap.add_argument("--stat", default="min", choices=["min", "median"],
                    help="statistic of the repeated timings reported as the figure (min: timeit's rule on a shared "
                         "machine, the slower repeats measure the neighbours); the other is kept in the JSON")
    ap.add_argument("--steps-between-draws", type=int, default=2)
    ap.add_argument("--sampling-batches", type=int, default=2, help="SGLD minibatches in the pool (cycled)")
    ap.add_argument("--sampler", default="rmsprop_sgld", choices=["sgld", "rmsprop_sgld"])
    ap.add_argument("--chains", type=int, default=1,
                    help="chains per component; where the sampler runs a component's chains in one batch, draw "
                         "and step times are per batch (all its chains) and GFLOP/s count them all")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each side-by-side baseline")
    ap.add_argument("--prefix-cache", default="auto", choices=["auto", "off", "on", "both"],
                    help="compare the package's prefix-activation caching off/on, if it has such an option")
    ap.add_argument("--api-kwargs", default="{}", help="JSON: extra keyword arguments of estimate_susceptibilities")
    ap.add_argument("--compute-kwargs", default="{}",
                    help='JSON: other fields of the compute config carrying prefix_cache, e.g. '
                         '\'{"memory_budget_gb": 8, "observation_dtype": "bfloat16"}\'')
    ap.add_argument("--out", default=str(HERE / "scaling_results.json"))
    ap.add_argument("--plots-dir", default=str(HERE))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes everywhere (a check that it runs)")
    ap.add_argument("--estimate-only", action="store_true", help="print the Pythia-1.4B estimate and exit")
    ap.add_argument("--replot", metavar="JSON", default=None,
                    help="redraw the plots (into --plots-dir) and reprint the estimate from a results file")
    ap.add_argument("--from-json", default=None, help="with --estimate-only: take the measured cost ratios from here")
    est = ap.add_argument_group("Pythia-1.4B estimate")
    est.add_argument("--obs-tokens", type=float, default=4.25e6, help="observation tokens per draw")
    est.add_argument("--est-context", type=int, default=256, help="context length (configs/pythia-1.4b.yaml: 256)")
    est.add_argument("--est-batch", type=int, default=16, help="SGLD minibatch contexts (spec: 16)")
    est.add_argument("--h200-peak", type=float, default=989e12, help="H200 bf16 dense peak FLOP/s")
    est.add_argument("--h200-fp32-peak", type=float, default=67e12, help="H200 FP32 (no TF32) peak FLOP/s")
    est.add_argument("--util", type=float, nargs="+", default=[0.30, 0.40], help="assumed sustained utilisation")
    args = ap.parse_args(argv)
    if args.smoke:
        args.base_model, args.models = "64x2", ["32x1", "64x2"]
        args.vocab, args.context, args.batch, args.obs_batch = 256, 32, 2, 4
        args.token_contexts, args.component_counts = [2, 4], [1, 0]
        args.component_obs_contexts, args.obs_contexts, args.repeats = 2, 4, 1
        if args.out == str(HERE / "scaling_results.json"):  # never overwrite the measured results
            smoke = Path(tempfile.mkdtemp(prefix="lit-susc-scaling-smoke-"))
            args.out, args.plots_dir = str(smoke / "scaling_results.json"), str(smoke)
    if min(args.draws, args.component_draws) < 4 or args.steps_between_draws < 2:
        ap.error("--draws must be >= 4 and --steps-between-draws >= 2 (clean draws and steps to take medians of)")
    if args.threads is None and (args.device or "cpu") == "cpu":
        args.threads = 1
    return args


def main(argv: list[str] | None = None) -> None:
    """The Pythia-1.4B estimate alone (``--estimate-only``), a redraw (``--replot``), or the sweeps."""
    args = parse_args(argv)
    if args.estimate_only:
        results = None
        src = Path(args.from_json) if args.from_json else None
        if src is not None and src.exists():
            results = json.loads(src.read_text())
        print_estimate(pythia_estimate(args, measured_ratios(results), measured_rates(results)))
        return
    if args.threads:
        pin_threads(args.threads)
    quiet_lightning()
    import scaling_harness  # only now: it imports torch, which must find the thread count already set

    if args.replot:
        scaling_harness.replot(args)
    else:
        scaling_harness.measure_sweeps(args, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
