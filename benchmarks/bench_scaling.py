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
import dataclasses
import inspect
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC_QUOTE = ("Computing the covariances for 6 million susceptibilities on Pythia 1.4b required tens of thousands "
              "of forward and backward passes on the model, and roughly 5000 H200 hours.")
SPEC_WHERE = ("spec (shared/seeds/000_6d20143884ac4a12.txt, line 113), section 'Working with Susceptibility Data'; "
              "line 127 speaks of 'the 4 million susceptibilities collected in Gordon et al. (2026)'")


def parse_args(argv=None) -> argparse.Namespace:
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
    return args


ARGS = parse_args()
if ARGS.threads is None and (ARGS.device or "cpu") == "cpu":
    ARGS.threads = 1
if ARGS.threads:
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    os.environ["MKL_NUM_THREADS"] = str(ARGS.threads)

import numpy as np
import torch
from timing import timed
from torch import nn

if ARGS.threads:
    torch.set_num_threads(ARGS.threads)

import logging
import warnings

# Lightning's per-fit banners and the "modules in eval mode" notice (the sampler runs the model in
# eval mode on purpose) would drown the tables.
import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: set ours after)

for _name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*eval mode.*")
warnings.filterwarnings("ignore", message=".*litlogger.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


# -- FLOP counting ---------------------------------------------------------------------------

def matmul_params(model: nn.Module) -> tuple[int, int]:
    """(P_trunk, P_head): weights of the nn.Linear layers in the blocks, and of the unembedding."""
    head = model.get_output_embeddings()
    trunk = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    return trunk, head.weight.numel()


def forward_flops(p_trunk: int, p_head: int, n_layer: int, d: int, T: int, contexts: float,
                  head_positions: int | None = None, trunk_fraction: float = 1.0) -> float:
    """FLOPs of a forward over ``contexts`` contexts of T positions (the module docstring's formula)."""
    head_positions = T - 1 if head_positions is None else head_positions
    trunk = T * (2 * p_trunk + 2 * n_layer * T * d)
    return contexts * (trunk_fraction * trunk + head_positions * 2 * p_head)


# -- the Pythia-1.4B estimate ----------------------------------------------------------------

PYTHIA_14B = {"hidden": 2048, "layers": 24, "heads": 16, "intermediate": 8192, "vocab": 50304}


def pythia_components(layers: int, heads: int, mlp_share: float) -> list[tuple[str, float]]:
    """(name, fraction of trunk FLOPs a prefix cache leaves to recompute) of the spec's 410 components."""
    names = ["embed"] + [f"layers.{layer}.{part}" for layer in range(layers)
                         for part in [f"heads.{h}" for h in range(heads)] + ["mlp"]] + ["unembed"]
    return [(name, trunk_fraction(name, layers, mlp_share)) for name in names]


def mlp_flop_share(d: int, ff: int, T: int) -> float:
    """The MLP's share of a block's forward FLOPs per position: 2 (2 d ff) / (2 (4 d^2 + 2 d ff) + 2 T d)."""
    return 2 * d * ff / (4 * d * d + 2 * d * ff + T * d)


def pythia_estimate(args, ratios: dict | None = None, rates: dict | None = None) -> dict:
    """FLOPs and H200-hours of the spec's run. ``ratios``: lit-susc/plain cost per FLOP measured here;
    ``rates``: achieved FLOP/s of draw and step measured on a GPU (then hours follow without an
    assumed utilisation)."""
    cfg = PYTHIA_14B
    d, L, V, T, B = cfg["hidden"], cfg["layers"], cfg["vocab"], args.est_context, args.est_batch
    p_trunk = L * (4 * d * d + 2 * d * cfg["intermediate"])  # QKV 3d^2 + dense d^2 + MLP 2 d ff
    p_head = d * V
    comps = pythia_components(L, cfg["heads"], mlp_flop_share(d, cfg["intermediate"], T))
    n_comp, chains, draws, between = len(comps), 4, 100, 160
    f_mean = sum(f for _, f in comps) / n_comp
    n_draws = n_comp * chains * draws
    n_steps = n_draws * between
    obs_ctx = args.obs_tokens / (T - 1)

    def fwd(contexts, f=1.0):
        return forward_flops(p_trunk, p_head, L, d, T, contexts, trunk_fraction=f)

    per_token = fwd(1) / (T - 1)
    obs_ref = n_draws * (fwd(obs_ctx) + fwd(B))
    obs_ref_cached = n_draws * (fwd(obs_ctx, f_mean) + fwd(B, f_mean))
    sgld = n_steps * 3 * fwd(B)
    sgld_cached = n_steps * 3 * fwd(B, f_mean)
    # What autograd here actually does (refinement, not the brief's formula): full forward; the input
    # gradients only through blocks >= l and the head (~1 forward of those); weight gradients only of
    # the tensors the component touches (a head: its layer's whole QKV + dense weights, 8 d^2 per
    # position; an MLP: 16 d^2; the unembedding: 2 d V; the embedding: a scatter, ~0).
    wgrad = {"heads": 2 * 4 * d * d, "mlp": 2 * 2 * d * cfg["intermediate"], "embed": 0.0, "unembed": 2 * d * V}

    def step_autograd(cached: bool) -> float:
        """Mean over components of one step's FLOPs: forward (full, or from block l with a prefix cache)
        + input gradients through blocks >= l and the head + the component's weight gradients."""
        tot = 0.0
        for name, f in comps:
            kind = "heads" if ".heads." in name else name.split(".")[-1]
            tot += fwd(B, f if cached else 1.0) + fwd(B, f) + B * T * wgrad[kind]
        return tot / n_comp

    sgld_autograd = n_steps * step_autograd(cached=False)
    sgld_autograd_cached = n_steps * step_autograd(cached=True)
    r_obs = (ratios or {}).get("obs_per_flop", 1.0)
    r_step = (ratios or {}).get("step_per_flop", 1.0)
    rows = [
        ("no cache; step = 3 x forward (nominal)", obs_ref, sgld),
        ("no cache; step as autograd here does it", obs_ref, sgld_autograd),
        (f"no cache; nominal x this run's measured cost ratios (draw x{r_obs:.2f}, step x{r_step:.2f})",
         obs_ref * r_obs, sgld * r_step),
        ("prefix cache for observation + L_ref only", obs_ref_cached, sgld),
        ("prefix cache for observation + L_ref + SGLD minibatches (nominal 3x)", obs_ref_cached, sgld_cached),
        ("prefix cache everywhere; step as autograd here does it", obs_ref_cached, sgld_autograd_cached),
    ]
    table = []
    for name, o, s in rows:
        total = o + s
        hours = {f"bf16 {u:.0%}": total / (args.h200_peak * u) / 3600 for u in args.util}
        hours["fp32 (no TF32) 50%"] = total / (args.h200_fp32_peak * 0.5) / 3600
        table.append({"scenario": name, "obs_ref_flops": o, "sgld_flops": s, "total_flops": total, "h200_hours": hours})
    # configs/pythia-1.4b.yaml as it stands: trainer precision 32-true (PyTorch's default float32
    # matmuls: no TF32), compute.observation_dtype bfloat16 (the observation forward only; L_ref stays
    # float32), prefix cache on. Observation in bf16 at the assumed utilisation, the rest at fp32 50%.
    obs_c, ref_c = n_draws * fwd(obs_ctx, f_mean), n_draws * fwd(B, f_mean)
    fp32_rate = args.h200_fp32_peak * 0.5
    hours = {f"bf16 {u:.0%}": (obs_c / (args.h200_peak * u) + (ref_c + sgld) / fp32_rate) / 3600 for u in args.util}
    hours["fp32 (no TF32) 50%"] = (obs_c + ref_c + sgld) / fp32_rate / 3600
    table.append({"scenario": "as configs/pythia-1.4b.yaml: obs bf16 (cols), L_ref + SGLD fp32 50%, obs+ref cache",
                  "obs_ref_flops": obs_c + ref_c, "sgld_flops": sgld, "total_flops": obs_c + ref_c + sgld,
                  "h200_hours": hours})
    measured = []
    for label, r in (rates or {}).get("runs", {}).items():
        # 'on' rates are effective (full-model FLOPs / time) for the measured component; applied to
        # the full-model FLOPs of all components, as if each saved what that one does.
        hours = (obs_ref / r["draw_flops_per_s"] + sgld / r["step_flops_per_s"]) / 3600
        measured.append({"scenario": f"prefix cache {label}, at the rates measured on {rates['from']}: draw "
                                     f"{r['draw_flops_per_s'] / 1e12:.3g}, step {r['step_flops_per_s'] / 1e12:.3g} "
                                     f"TFLOP/s (nominal)", "h200_hours": hours})
    sensitivity = {}
    for label, tokens in (("0.52M (configs/pythia-1.4b.yaml: 2048 x 255)", 2048 * 255), ("4M (spec line 127)", 4e6),
                          ("4.25M (this estimate)", 4.25e6), ("6M (spec line 113)", 6e6)):
        o = n_draws * (fwd(tokens / (T - 1)) + fwd(B))
        sensitivity[label] = (o + sgld) / (args.h200_peak * 0.35) / 3600
    return {
        "assumptions": {
            "model": "Pythia-1.4B: d 2048, 24 layers, 16 heads, MLP 8192, vocab 50304 (padded)",
            "P_trunk": p_trunk, "P_head": p_head, "forward_flops_per_token": per_token,
            "context": T, "batch_contexts": B, "obs_tokens_per_draw": args.obs_tokens,
            "components": n_comp, "chains": chains, "draws": draws, "steps_between_draws": between,
            "draws_total": n_draws, "sgld_steps_total": n_steps, "sgld_steps_per_chain": draws * between,
            "mean_trunk_fraction_with_prefix_cache": f_mean,
            "h200_bf16_dense_peak": args.h200_peak, "h200_fp32_peak": args.h200_fp32_peak, "utilisation": args.util,
            "cpu_cost_ratios": {"obs_per_flop": r_obs, "step_per_flop": r_step, "from": (ratios or {}).get("from")},
        },
        "table": table,
        "at_measured_rates": measured,
        "hours_at_bf16_35pct_by_obs_tokens": sensitivity,
        "spec": {"quote": SPEC_QUOTE, "where": SPEC_WHERE, "h200_hours": 5000},
    }


def print_estimate(est: dict) -> None:
    a = est["assumptions"]
    print("\n== Pythia-1.4B ground truth with lit-susc on H200s (estimate, nothing run) ==")
    print(f"{a['components']} components x {a['chains']} chains x {a['draws']} draws = {a['draws_total']:,} draws; "
          f"{a['steps_between_draws']} SGLD steps between draws = {a['sgld_steps_total']:,} steps "
          f"({a['sgld_steps_per_chain']:,} per chain)")
    print(f"per draw: observation forward over {a['obs_tokens_per_draw']:,.0f} tokens + L_ref on {a['batch_contexts']} "
          f"x {a['context']}; per step: forward+backward of {a['batch_contexts']} x {a['context']}")
    print(f"forward FLOPs per token {a['forward_flops_per_token']:.3e} (2 x {a['P_trunk'] / 1e9:.3f}B trunk + "
          f"2 x {a['P_head'] / 1e6:.1f}M head + attention 2 n_layer T d); mean trunk fraction left by a prefix cache "
          f"over the {a['components']} components: {a['mean_trunk_fraction_with_prefix_cache']:.4f}")
    keys = list(est["table"][0]["h200_hours"])
    head = f"{'scenario':<86} {'obs+ref':>9} {'SGLD':>9} {'total':>9} " + " ".join(f"{k:>20}" for k in keys)
    print(head)
    for row in est["table"]:
        print(f"{row['scenario']:<86} {row['obs_ref_flops']:9.2e} {row['sgld_flops']:9.2e} {row['total_flops']:9.2e} "
              + " ".join(f"{row['h200_hours'][k]:18,.0f} h" for k in keys))
    for row in est.get("at_measured_rates", []):
        print(f"{row['scenario']:<86} {row['h200_hours']:,.0f} h")
    print(f"{'spec: roughly 5000 H200 hours':<86} {'':>9} {'':>9} {'':>9} " + " ".join(f"{'~5,000 h':>20}" for _ in keys))
    print(f"  spec says: \"{est['spec']['quote']}\"\n  ({est['spec']['where']})")
    print("  H200-hours at bf16 35% by observation tokens per draw (no cache, nominal): "
          + "; ".join(f"{k}: {v:,.0f} h" for k, v in est["hours_at_bf16_35pct_by_obs_tokens"].items()))
    r = a["cpu_cost_ratios"]
    print(f"  measured cost ratios used in row 3 (lit-susc time / plain-op time per FLOP): draw {r['obs_per_flop']:.2f}, "
          f"step {r['step_per_flop']:.2f} (from: {r['from']})")


# -- measuring -----------------------------------------------------------------------------------

def parse_model(spec: str) -> tuple[int, int, int]:
    parts = [int(x) for x in spec.lower().split("x")]
    if len(parts) not in (2, 3):
        raise SystemExit(f"model spec {spec!r}: use HIDDENxLAYERS or HIDDENxLAYERSxHEADS")
    hidden, layers = parts[:2]
    heads = parts[2] if len(parts) == 3 else 4
    return hidden, layers, heads


def build_model(spec: str, args, device):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hidden, layers, heads = parse_model(spec)
    cfg = GPTNeoXConfig(vocab_size=args.vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=max(args.context, 64), rotary_pct=0.25)
    torch.manual_seed(0)
    try:
        with torch.device(device):  # a 1.4B model initialises in seconds on the GPU, minutes on a CPU core
            model = GPTNeoXForCausalLM(cfg)
    except Exception:  # noqa: BLE001 - older transformers: build on the CPU, then move
        model = GPTNeoXForCausalLM(cfg).to(device)
    return model.eval()


def cache_option():
    """Where the package's prefix-cache switch lives, if it has one: (where, name, default) or None."""
    import lit_susc
    from lit_susc.config import SGLDConfig
    from lit_susc.sampler import SusceptibilitySampler

    pattern = re.compile(r"prefix|cache|^compute$")
    sig = inspect.signature(lit_susc.estimate_susceptibilities).parameters
    for name, p in sig.items():
        if pattern.search(name):
            return ("api", name, p.default)
    for f in dataclasses.fields(SGLDConfig):
        if pattern.search(f.name):
            return ("sgld", f.name, f.default)
    for name, p in inspect.signature(SusceptibilitySampler.__init__).parameters.items():
        if pattern.search(name):
            return ("module", name, p.default)
    return None


def _compute_type(default):
    """The dataclass holding ``prefix_cache`` (e.g. lit_susc.config.ComputeConfig), or None."""
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return type(default)
    import lit_susc
    import lit_susc.config

    for module in (lit_susc.config, lit_susc):
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and \
                    any(f.name == "prefix_cache" for f in dataclasses.fields(obj)):
                return obj
    return None


def cache_value(option, on: bool, extra: dict | None = None):
    """The value meaning 'cache on/off' for the option found: a bool, or the compute dataclass
    (``--compute-kwargs`` fills its other fields), or a dict as the last resort."""
    _, name, default = option
    if "prefix" in name or isinstance(default, bool):
        return on
    kind = _compute_type(default)
    if kind is not None:
        return kind(**{**(extra or {}), "prefix_cache": on})
    return {**(default if isinstance(default, dict) else {}), **(extra or {}), "prefix_cache": on}


class BatchTimer:
    """Lightning callback: wall time from one training batch's start to the next one's, per batch."""

    def __new__(cls, *a, **k):  # built lazily so that importing this file does not import lightning
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.records: list[dict] = []
                self._open = None
                self.loop = None

            def _now(self, pl_module) -> float:
                if pl_module.device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter()

            def _close(self, now: float) -> None:
                if self._open is not None and self._open[1] is not None:
                    self.records.append({**self._open[1], "seconds": now - self._open[0]})
                self._open = None

            def on_train_start(self, trainer, pl_module) -> None:
                self._t_start = self._now(pl_module)

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                now = self._now(pl_module)
                self._close(now)
                self._open = [now, None]

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                # training_step's output: one chain's dict ({"unit", "step", "draw", "unit_done"}),
                # or {"chains": [such dicts]} when chains of a component run together.
                if not isinstance(outputs, dict) or self._open is None:
                    return
                chains = outputs.get("chains", [outputs])
                outputs = chains[0] if chains else {}
                unit = outputs.get("unit")
                if unit is None:
                    return
                step = int(outputs.get("step", -1))
                if step == 0:
                    self._draws_in_unit = 0
                is_draw = outputs.get("draw") is not None
                if is_draw:
                    self._draws_in_unit = getattr(self, "_draws_in_unit", 0) + 1
                kind = ("start" if step == 0 else "end" if outputs.get("unit_done") else
                        ("first_draw" if self._draws_in_unit == 1 else "draw") if is_draw else "step")
                self._open[1] = {"component": getattr(unit, "component", str(unit)), "step": step, "kind": kind,
                                 "chains": len(chains)}

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                self._close(self._now(pl_module))

            def on_train_end(self, trainer, pl_module) -> None:
                self.loop = self._now(pl_module) - self._t_start

        return _Timer()


def autocast(args, device):
    if "bf16" in args.precision:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if args.precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    from contextlib import nullcontext
    return nullcontext()



def run_config(model, components: list[str], obs: torch.Tensor, args, device, cache=None,
               draws: int | None = None) -> dict:
    """One estimate_susceptibilities run; returns step/draw timings and per-component medians."""
    import lit_susc
    from lit_susc.config import SGLDConfig
    from lit_susc.lm import per_token_loss

    g = torch.Generator().manual_seed(1)
    sampling = [torch.randint(0, args.vocab, (args.batch, args.context), generator=g) for _ in range(args.sampling_batches)]
    observation = list(obs.split(args.obs_batch))
    sgld = SGLDConfig(lr=1e-6, nbeta=10.0, localization=300.0, chains=args.chains, draws=draws or args.draws, burn_in=0,
                      steps_between_draws=args.steps_between_draws, seed=0, sampler=args.sampler)
    timer = BatchTimer()
    trainer = {"accelerator": device.type, "devices": 1, "callbacks": [timer], "enable_progress_bar": False,
               "logger": False, "precision": args.precision}
    kwargs = json.loads(args.api_kwargs)
    where = None
    if cache is not None:
        option, on = cache
        where, name, _ = option
        value = cache_value(option, on, json.loads(args.compute_kwargs))
        if where == "api":
            kwargs[name] = value
        elif where == "sgld":
            sgld = dataclasses.replace(sgld, **{name: value})
    t = time.perf_counter()
    if where == "module":  # the option exists only on the LightningModule: build it as the API would
        import tempfile

        from lit_susc.components import resolve_components
        from lit_susc.engine import make_trainer, run_sampling
        from lit_susc.sampler import SamplingData, SusceptibilitySampler

        with tempfile.TemporaryDirectory() as run_dir:
            module = SusceptibilitySampler(model, per_token_loss, resolve_components(model, components),
                                           SamplingData(sampling=sampling, observation=observation,
                                                        reference=sampling[0]),
                                           sgld, run_dir, **{name: value})
            run_sampling(module, make_trainer(trainer, Path(run_dir)))
    else:
        lit_susc.estimate_susceptibilities(model, per_token_loss, sampling, observation, components=components,
                                           sgld=sgld, trainer=trainer, reference_data=sampling[0], **kwargs)
    wall = time.perf_counter() - t
    recs = timer.records
    steps = [r["seconds"] for r in recs if r["kind"] == "step"]
    draws = [r["seconds"] for r in recs if r["kind"] == "draw"]
    stats = {"min": min, "median": statistics.median}
    out = {"stat": args.stat, "loop_s": timer.loop, "fit_s": wall, "n_steps_timed": len(steps),
           "n_draws_timed": len(draws), "chains_per_batch": max(r.get("chains", 1) for r in recs)}
    for sname, f in sorted(stats.items(), key=lambda kv: kv[0] != args.stat):  # the chosen one unsuffixed
        sfx = "" if sname == args.stat else f"_{sname}"
        step = f(steps)
        out.update({f"step_s{sfx}": step, f"draw_batch_s{sfx}": f(draws), f"draw_s{sfx}": f(draws) - step,
                    f"first_draw_s{sfx}": f([r["seconds"] for r in recs if r["kind"] == "first_draw"]) - step,
                    f"unit_start_s{sfx}": f([r["seconds"] for r in recs if r["kind"] == "start"]),
                    f"unit_end_s{sfx}": f([r["seconds"] for r in recs if r["kind"] == "end"])})
    f = stats[args.stat]
    if len(components) > 1:
        per = {}
        for c in components:
            s = [r["seconds"] for r in recs if r["component"] == c and r["kind"] == "step"]
            d = [r["seconds"] for r in recs if r["component"] == c and r["kind"] == "draw"]
            if s and d:
                per[c] = {"step_s": f(s), "draw_s": f(d) - f(s)}
        out["per_component"] = per
        mean_over_components(out)
    return out


def mean_over_components(run: dict) -> None:
    """With several components, ``draw_s``/``step_s`` become the mean over components of each one's
    figure (a run of all components pays that on average); the pooled statistic stays as ``*_pooled``."""
    per = run.get("per_component")
    if not per or "draw_s_pooled" in run:
        return
    run["draw_s_pooled"], run["step_s_pooled"] = run["draw_s"], run["step_s"]
    run["draw_s"] = statistics.fmean(v["draw_s"] for v in per.values())
    run["step_s"] = statistics.fmean(v["step_s"] for v in per.values())


def baselines(model, obs: torch.Tensor, args, device) -> dict:
    """Plain forward / per_token_loss over the observation tokens, plain fwd+bwd on one minibatch."""
    from lit_susc.lm import per_token_loss

    model.to(device).eval()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    batch = torch.randint(0, args.vocab, (args.batch, args.context), generator=g).to(device)
    obs_batches = [b.to(device) for b in obs.split(args.obs_batch)]

    def forward():
        with torch.no_grad(), autocast(args, device):
            for b in obs_batches:
                model(input_ids=b, use_cache=False)

    def loss_only():
        with torch.no_grad(), autocast(args, device):
            for b in obs_batches:
                per_token_loss(model, b)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast(args, device):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()

    fns = {"forward_s": forward, "per_token_loss_s": loss_only, "fwd_bwd_s": forward_backward}
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(args.repeats):  # interleaved: load on the machine hits every side alike
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    model.zero_grad(set_to_none=True)
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    stat = min if args.stat == "min" else statistics.median
    out = {k: stat(v) for k, v in times.items()}
    out.update({f"{k}_all": v for k, v in times.items()})
    return out


def measure(model, components: list[str], obs: torch.Tensor, args, device, caches, with_baselines=True,
            draws: int | None = None) -> dict:
    """run_config for each cache setting, plus baselines and FLOP counts."""
    p_trunk, p_head = matmul_params(model)
    cfg = model.config
    T, n_obs = args.context, obs.shape[0]
    f_obs = forward_flops(p_trunk, p_head, cfg.num_hidden_layers, cfg.hidden_size, T, n_obs)
    f_ref = forward_flops(p_trunk, p_head, cfg.num_hidden_layers, cfg.hidden_size, T, args.batch)
    f_step = 3 * f_ref
    entry = {"params": sum(p.numel() for p in model.parameters()), "p_trunk": p_trunk, "p_head": p_head,
             "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
             "obs_contexts": n_obs, "obs_tokens": n_obs * (T - 1), "components": components,
             "flops_per_token": f_obs / (n_obs * (T - 1)), "flops_draw": f_obs + f_ref, "flops_step": f_step,
             "runs": {}}
    # What a prefix cache should save on the draws of these components (blocks below the component's
    # first block and its untouched branch skipped; the embedding saves nothing, the unembedding the trunk).
    L = cfg.num_hidden_layers
    share = mlp_flop_share(cfg.hidden_size, cfg.intermediate_size, T)
    cached = sum(forward_flops(p_trunk, p_head, L, cfg.hidden_size, T, n_obs + args.batch,
                               trunk_fraction=trunk_fraction(c, L, share)) for c in components)
    entry["predicted_cache_speedup_draw"] = len(components) * (f_obs + f_ref) / cached
    for label, cache in caches:
        r = run_config(model, components, obs, args, device, cache, draws)
        # A batch may carry several chains of a component at once (vmapped): its FLOPs scale with them.
        r["draw_gflops"] = r["chains_per_batch"] * (f_obs + f_ref) / r["draw_s"] / 1e9
        r["step_gflops"] = r["chains_per_batch"] * f_step / r["step_s"] / 1e9
        entry["runs"][label] = r
    if "off" in entry["runs"] and "on" in entry["runs"]:
        off, on = entry["runs"]["off"], entry["runs"]["on"]
        if "per_component" in off and "per_component" in on:  # summed over components: what a full run pays
            common = [c for c in off["per_component"] if c in on["per_component"]]
            entry["measured_cache_speedup_draw"] = (sum(off["per_component"][c]["draw_s"] for c in common)
                                                    / max(sum(on["per_component"][c]["draw_s"] for c in common), 1e-12))
        else:
            entry["measured_cache_speedup_draw"] = off["draw_s"] / on["draw_s"]
        entry["measured_cache_speedup_step"] = off["step_s"] / on["step_s"]
        entry["measured_cache_speedup_loop"] = off["loop_s"] / on["loop_s"]
    if with_baselines:
        b = baselines(model, obs, args, device)
        f_fwd = forward_flops(p_trunk, p_head, cfg.num_hidden_layers, cfg.hidden_size, T, n_obs, head_positions=T)
        b["forward_gflops"] = f_fwd / b["forward_s"] / 1e9
        b["per_token_loss_gflops"] = f_obs / b["per_token_loss_s"] / 1e9
        b["fwd_bwd_gflops"] = f_step / b["fwd_bwd_s"] / 1e9
        entry["baseline"] = b
        for r in entry["runs"].values():
            # lit-susc's cost per FLOP relative to the plain op's (1 = as fast as a plain forward / fwd+bwd)
            r["draw_per_flop_vs_forward"] = b["forward_gflops"] / r["draw_gflops"]
            r["step_per_flop_vs_fwd_bwd"] = b["fwd_bwd_gflops"] / r["step_gflops"]
    return entry


def pick_components(names: list[str], k: int) -> list[str]:
    """k names evenly spread over the list (centred), all of them for k = 0 or k >= len."""
    if k <= 0 or k >= len(names):
        return list(names)
    idx = sorted({int((i + 0.5) * len(names) / k) for i in range(k)})
    return [names[i] for i in idx]


def trunk_fraction(name: str, n_layers: int, mlp_share: float) -> float:
    """Share of the trunk a prefix cache leaves to recompute for a component.

    A component in block l needs blocks l..L-1 again, less the branch of block l it leaves alone
    (lit_susc.prefix, parallel residual: a head skips the MLP, ``mlp_share`` of a block; an MLP the
    attention): (L - l - skipped) / L. The embedding moves the input of every block (1); the
    unembedding none (0; the head itself is always recomputed)."""
    if name == "embed":
        return 1.0
    if name == "unembed":
        return 0.0
    m = re.match(r"layers\.(\d+)\.(heads|mlp)", name)
    if not m:
        return 1.0
    skipped = mlp_share if m.group(2) == "heads" else 1 - mlp_share
    return (n_layers - int(m.group(1)) - skipped) / n_layers


def component_depth(name: str, n_layers: int) -> float:
    """Position along the forward: embed 0, block l at l + 1, unembed n_layers + 1."""
    if name == "embed":
        return 0
    if name == "unembed":
        return n_layers + 1
    m = re.match(r"layers\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else float("nan")


def token_fits(points: list[dict]) -> dict:
    """Per cache setting: log-log slope of draw time vs tokens, and draw = intercept + slope * tokens."""
    fits = {}
    for label in points[0]["runs"]:
        x = np.array([p["obs_tokens"] for p in points], dtype=float)
        y = np.array([p["runs"][label]["draw_s"] for p in points])
        if len(points) < 2:
            fits[label] = {"loglog_slope": float("nan"), "intercept_s": float("nan"), "us_per_token": float("nan")}
            continue
        b, a = np.polyfit(x, y, 1)
        fits[label] = {"loglog_slope": float(np.polyfit(np.log(x), np.log(y), 1)[0]), "intercept_s": float(a),
                       "us_per_token": float(b * 1e6)}
    return fits


def print_cache_speedups(points: list[dict], key: str) -> None:
    """Prefix cache off/on: measured speed-ups next to the FLOP count's prediction for the draw."""
    if not any("measured_cache_speedup_draw" in p for p in points):
        return
    print("prefix cache off/on speed-up (measured draw | predicted draw from FLOPs | measured step | whole loop): "
          + "; ".join(f"{len(p[key]) if key == 'components' else p[key]}: {p['measured_cache_speedup_draw']:.2f} | "
                      f"{p['predicted_cache_speedup_draw']:.2f} | {p['measured_cache_speedup_step']:.2f} | "
                      f"{p['measured_cache_speedup_loop']:.2f}" for p in points if "measured_cache_speedup_draw" in p))


def fmt_row(cols, widths):
    return " ".join(f"{c:>{w}}" if not isinstance(c, str) else f"{c:<{w}}" for c, w in zip(cols, widths))


# -- plots ----------------------------------------------------------------------------------------

def plot_all(results: dict, plots_dir: Path) -> list[str]:
    from matplotlib.ticker import NullFormatter

    from lit_susc.figures import Figure, save_png

    def write(fig: Figure, name: str) -> None:
        fig.tight_layout()
        written.append(str(save_png(fig, plots_dir / name, dpi=110)))

    written = []
    meta = results["meta"]
    tag = f"{meta['device']}, {meta['precision']}, {meta['threads'] or 'default'} thread(s)"
    sw = results["sweeps"]
    if "tokens" in sw:
        fig = Figure(figsize=(6.4, 4.6))
        ax = fig.subplots()
        rows = sw["tokens"]["points"]
        x = [r["obs_tokens"] for r in rows]
        for label in rows[0]["runs"]:
            ax.loglog(x, [r["runs"][label]["draw_s"] for r in rows], "o-", label=f"draw: obs pass + L_ref ({label})")
            ax.loglog(x, [r["runs"][label]["step_s"] for r in rows], "s--", label=f"SGLD step ({label})")
        if "baseline" in rows[0]:
            ax.loglog(x, [r["baseline"]["forward_s"] for r in rows], "k:", label="plain no-grad forward, obs tokens")
            ax.loglog(x, [r["baseline"]["forward_s"] * r["flops_draw"] / (r["flops_draw"] - r["flops_step"] / 3)
                          for r in rows], "k-.", lw=0.8, label="same, scaled to obs + reference tokens")
        fits = sw["tokens"].get("fits") or token_fits(rows)
        slope = ", ".join(f"{k} {v['loglog_slope']:.2f}" for k, v in fits.items())
        ax.set(xlabel="observation tokens per draw", ylabel="seconds")
        ax.set_title(f"time per draw vs tokens ({sw['tokens']['model']}, {sw['tokens']['component']}; "
                     f"slope {slope})\n{tag}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        write(fig, "scaling_tokens.png")
    if "components" in sw:
        fig = Figure(figsize=(11, 4.4))
        a1, a2 = fig.subplots(1, 2)
        rows = sw["components"]["points"]
        x = [len(r["components"]) for r in rows]
        for label in rows[0]["runs"]:
            a1.loglog(x, [r["runs"][label]["loop_s"] for r in rows], "o-", label=f"whole loop ({label})")
            a1.loglog(x, [r["runs"][label]["draw_s"] for r in rows], "s--", label=f"per draw ({label})")
            a1.loglog(x, [r["runs"][label]["step_s"] for r in rows], "^:", label=f"per step ({label})")
        a1.set(xlabel=f"components ({meta['sgld']['chains']} chain(s) each)", ylabel="seconds",
               title=f"vs number of components ({sw['components']['model']})")
        a1.legend(fontsize=7)
        a1.grid(True, which="both", alpha=0.3)
        full = rows[-1]
        n_layers = full["layers"]
        for i, (label, r) in enumerate(full["runs"].items()):
            per = r.get("per_component", {})
            xs = [component_depth(c, n_layers) + 0.15 * (2 * i - 1) * (len(full["runs"]) > 1) for c in per]
            a2.plot(xs, [v["draw_s"] for v in per.values()], "o", label=f"draw ({label})")
            a2.plot(xs, [v["step_s"] for v in per.values()], "x", label=f"step ({label})")
        a2.set(xlabel="component position (0 embed, l+1 block l, L+1 unembed)", ylabel="seconds",
               title=f"per component, all {len(full['components'])} (prefix cache: cheaper to the right)")
        a2.legend(fontsize=7)
        a2.grid(True, alpha=0.3)
        fig.suptitle(tag, fontsize=8)
        write(fig, "scaling_components.png")
    if "models" in sw:
        fig = Figure(figsize=(11, 4.4))
        a1, a2 = fig.subplots(1, 2)
        rows = sw["models"]["points"]
        x = [r["flops_per_token"] for r in rows]
        for label in rows[0]["runs"]:
            a1.loglog(x, [r["runs"][label]["draw_s"] for r in rows], "o-", label=f"draw ({label})")
            a1.loglog(x, [r["runs"][label]["step_s"] for r in rows], "s--", label=f"SGLD step ({label})")
            a2.semilogx(x, [r["runs"][label]["draw_gflops"] for r in rows], "o-", label=f"draw ({label})")
            a2.semilogx(x, [r["runs"][label]["step_gflops"] for r in rows], "s--",
                        label=f"step, nominal 3x fwd ({label})")
        if "baseline" in rows[0]:
            a1.loglog(x, [r["baseline"]["forward_s"] for r in rows], "k:", label="plain forward, obs tokens")
            a2.semilogx(x, [r["baseline"]["forward_gflops"] for r in rows], "k:", label="plain forward")
            a2.semilogx(x, [r["baseline"]["fwd_bwd_gflops"] for r in rows], "k-.", label="plain fwd+bwd")
        for r in rows:
            a1.annotate(f"{r['hidden']}x{r['layers']}", (r["flops_per_token"], r["runs"][next(iter(r['runs']))]["draw_s"]),
                        fontsize=7, textcoords="offset points", xytext=(4, 4))
        a1.set(xlabel="forward FLOPs per token", ylabel="seconds", title="time vs model size")
        a2.set(xlabel="forward FLOPs per token", ylabel="achieved GFLOP/s",
               title="achieved throughput (cache on: full-model FLOPs / time)")
        for a in (a1, a2):
            a.legend(fontsize=7)
            a.grid(True, which="both", alpha=0.3)
            a.xaxis.set_minor_formatter(NullFormatter())
        fig.suptitle(tag, fontsize=8)
        write(fig, "scaling_models.png")
    return written


# -- main -------------------------------------------------------------------------------------------

def measured_ratios(results: dict | None) -> dict | None:
    """lit-susc/plain cost per FLOP of the draw and the step, from the largest model measured."""
    if not results or "models" not in results.get("sweeps", {}):
        return None
    big = max(results["sweeps"]["models"]["points"], key=lambda r: r["flops_per_token"])
    label = "off" if "off" in big["runs"] else next(iter(big["runs"]))
    r = big["runs"][label]
    if "draw_per_flop_vs_forward" not in r:
        return None
    return {"obs_per_flop": r["draw_per_flop_vs_forward"], "step_per_flop": r["step_per_flop_vs_fwd_bwd"],
            "from": f"{big['hidden']}x{big['layers']} model on {results['meta']['device']} "
                    f"({results['meta']['precision']}), run '{label}'"}


def measured_rates(results: dict | None) -> dict | None:
    """Achieved draw and step FLOP/s (nominal FLOPs) of the largest model, when measured on a GPU."""
    if not results or "models" not in results.get("sweeps", {}) or "cuda" not in results["meta"]["device"]:
        return None
    big = max(results["sweeps"]["models"]["points"], key=lambda r: r["flops_per_token"])
    return {"from": f"{results['meta']['device_name']}, {big['spec']}, {results['meta']['precision']}",
            "runs": {label: {"draw_flops_per_s": r["draw_gflops"] * 1e9, "step_flops_per_s": r["step_gflops"] * 1e9}
                     for label, r in big["runs"].items()}}


def main() -> None:
    args = ARGS
    if args.estimate_only:
        results = None
        src = Path(args.from_json) if args.from_json else None
        if src is not None and src.exists():
            results = json.loads(src.read_text())
        print_estimate(pythia_estimate(args, measured_ratios(results), measured_rates(results)))
        return
    if args.replot:
        results = json.loads(Path(args.replot).read_text())
        for p in results["sweeps"].get("components", {}).get("points", []):
            for r in p["runs"].values():
                mean_over_components(r)
                r["draw_gflops"] = p["flops_draw"] / r["draw_s"] / 1e9
                r["step_gflops"] = p["flops_step"] / r["step_s"] / 1e9
            if "measured_cache_speedup_step" in p:
                p["measured_cache_speedup_step"] = p["runs"]["off"]["step_s"] / p["runs"]["on"]["step_s"]
        if "tokens" in results["sweeps"]:
            results["sweeps"]["tokens"].pop("slope_draw", None)
            results["sweeps"]["tokens"]["fits"] = token_fits(results["sweeps"]["tokens"]["points"])
            print("token fits:", results["sweeps"]["tokens"]["fits"])
        est = pythia_estimate(args, measured_ratios(results), measured_rates(results))
        results["pythia_1.4b_estimate"] = est
        print_estimate(est)
        Path(args.replot).write_text(json.dumps(results, indent=1))
        print("wrote", args.replot, "and", ", ".join(plot_all(results, Path(args.plots_dir))))
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    option = cache_option()
    mode = args.prefix_cache
    if mode == "auto":
        mode = "both" if option else "off"
    if option is None and mode in ("on", "both"):
        print(f"note: --prefix-cache {mode}: this lit_susc has no prefix-cache option; measuring without it")
        mode = "off"
    caches = {"off": [("off", (option, False) if option else None)], "on": [("on", (option, True))],
              "both": [("off", (option, False)), ("on", (option, True))]}[mode]
    import lightning
    import transformers

    meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "precision": args.precision, "matmul_precision": args.matmul_precision,
            "torch": torch.__version__, "lightning": lightning.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "prefix_cache_option": None if option is None else {"where": option[0], "name": option[1],
                                                                "default": repr(option[2])},
            "prefix_cache_mode": mode, "argv": sys.argv[1:],
            "stat": args.stat, "repeats": args.repeats,
            "sgld": {"sampler": args.sampler, "chains": args.chains, "draws": args.draws, "component_draws": args.component_draws,
                     "steps_between_draws": args.steps_between_draws},
            "vocab": args.vocab, "context": args.context, "batch": args.batch, "obs_batch": args.obs_batch}
    print(f"device {meta['device']} ({meta['device_name']}), threads {meta['threads']}, precision {args.precision}, "
          f"torch {torch.__version__}; prefix cache: "
          f"{'not available in this lit_susc' if option is None else f'{option[0]}.{option[1]}, mode {mode}'}")
    results = {"meta": meta, "flop_formula": (
        "forward FLOPs per context = T*(2*P_trunk + 2*n_layer*T*d) + (T-1)*2*P_head; P_trunk = nn.Linear weights "
        "in the blocks, P_head = d*vocab; SGLD step = 3 x forward of the minibatch (nominal); draw = observation "
        "forward + reference-batch forward"), "sweeps": {}}
    from lit_susc.components import resolve_components

    # A throwaway run first: the first fit in a process pays one-off costs (lazy imports, allocator
    # warm-up, kernel selection) that would land on whichever configuration came first.
    # Each cache setting, since the cached path has one-off imports of its own.
    warm = build_model("64x2", args, device)
    for _, cache in caches:
        run_config(warm, ["layers.1.mlp"], torch.randint(0, args.vocab, (2, args.context)), args, device, cache)
    del warm
    t_all = time.perf_counter()

    def obs_tokens(n):
        return torch.randint(0, args.vocab, (n, args.context), generator=torch.Generator().manual_seed(3))

    def comp_for(model):
        return args.component.format(mid=model.config.num_hidden_layers // 2)

    if "tokens" in args.sweeps:
        model = build_model(args.base_model, args, device)
        comp = comp_for(model)
        print(f"\n== time per draw vs observation tokens: {args.base_model}, component {comp} ==")
        w = [8, 8, 10, 10, 12, 10, 10, 10]
        print(fmt_row(["tokens", "run", "draw ms", "step ms", "fwd ms", "ptl ms", "per FLOP", "draw GF/s"], w))
        points = []
        for n in args.token_contexts:
            e = measure(model, [comp], obs_tokens(n), args, device, caches)
            points.append(e)
            for label, r in e["runs"].items():
                b = e["baseline"]
                print(fmt_row([e["obs_tokens"], label, f"{r['draw_s'] * 1e3:.1f}", f"{r['step_s'] * 1e3:.1f}",
                               f"{b['forward_s'] * 1e3:.1f}", f"{b['per_token_loss_s'] * 1e3:.1f}",
                               f"{r['draw_per_flop_vs_forward']:.2f}", f"{r['draw_gflops']:.1f}"], w), flush=True)
        print_cache_speedups(points, "obs_tokens")
        results["sweeps"]["tokens"] = {"model": args.base_model, "component": comp, "points": points,
                                       "fits": token_fits(points)}
        print("(fwd: plain no-grad forward over the observation tokens; ptl: per_token_loss alone over them; "
              "per FLOP: the draw's cost per FLOP / the plain forward's, the draw counting obs + reference tokens)")
        for label, fit in results["sweeps"]["tokens"]["fits"].items():
            print(f"draw time vs tokens ({label}): log-log slope {fit['loglog_slope']:.2f}; linear fit "
                  f"{fit['intercept_s'] * 1e3:.0f} ms + {fit['us_per_token']:.1f} us/token "
                  f"(the intercept ~ L_ref on the {args.batch} x {args.context} reference batch + overhead)")
        del model

    if "components" in args.sweeps:
        model = build_model(args.base_model, args, device)
        names = list(resolve_components(model, ["*"]))
        obs = obs_tokens(args.component_obs_contexts)
        print(f"\n== vs number of components: {args.base_model} ({len(names)} components), "
              f"{obs.shape[0] * (args.context - 1)} observation tokens, {args.chains} chain(s) x {args.component_draws} draws each ==")
        w = [6, 5, 10, 12, 10, 10, 12]
        print(fmt_row(["comps", "run", "loop s", "loop/comp s", "draw ms", "step ms", "unit start ms"], w))
        points = []
        for k in args.component_counts:
            comps = pick_components(names, k)
            e = measure(model, comps, obs, args, device, caches, with_baselines=(k == args.component_counts[0]),
                        draws=args.component_draws)
            points.append(e)
            for label, r in e["runs"].items():
                print(fmt_row([len(comps), label, f"{r['loop_s']:.2f}", f"{r['loop_s'] / len(comps):.3f}",
                               f"{r['draw_s'] * 1e3:.1f}", f"{r['step_s'] * 1e3:.1f}",
                               f"{r['unit_start_s'] * 1e3:.1f}"], w), flush=True)
        full = points[-1]
        for label, r in full["runs"].items():
            per = r.get("per_component", {})
            if per:
                print(f"per component ({label}), draw ms / step ms: " + ", ".join(
                    f"{c}: {v['draw_s'] * 1e3:.0f}/{v['step_s'] * 1e3:.0f}" for c, v in per.items()))
        print_cache_speedups(points, "components")
        results["sweeps"]["components"] = {"model": args.base_model, "available": names, "points": points}
        del model

    if "models" in args.sweeps:
        print(f"\n== vs model size: {args.obs_contexts} x {args.context} observation contexts, minibatch "
              f"{args.batch} x {args.context}, vocab {args.vocab} ==")
        w = [12, 9, 11, 5, 9, 9, 9, 9, 9, 9, 9, 9]
        print(fmt_row(["model", "params M", "GFLOP/tok", "run", "draw ms", "step ms", "fwd ms", "fb ms",
                       "draw GF/s", "step GF/s", "fwd GF/s", "fb GF/s"], w))
        points = []
        for spec in args.models:
            model = build_model(spec, args, device)
            comp = comp_for(model)
            e = measure(model, [comp], obs_tokens(args.obs_contexts), args, device, caches)
            e["spec"] = spec
            points.append(e)
            b = e["baseline"]
            for label, r in e["runs"].items():
                print(fmt_row([spec, f"{e['params'] / 1e6:.2f}", f"{e['flops_per_token'] / 1e9:.4f}", label,
                               f"{r['draw_s'] * 1e3:.1f}", f"{r['step_s'] * 1e3:.1f}", f"{b['forward_s'] * 1e3:.1f}",
                               f"{b['fwd_bwd_s'] * 1e3:.1f}", f"{r['draw_gflops']:.1f}", f"{r['step_gflops']:.1f}",
                               f"{b['forward_gflops']:.1f}", f"{b['fwd_bwd_gflops']:.1f}"], w), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print_cache_speedups(points, "spec")
        results["sweeps"]["models"] = {"component": args.component, "points": points}
        print("(GF/s: achieved GFLOP/s; step counted as 3 x forward of the minibatch; draw = observation forward "
              "+ reference-batch forward)")

    meta["seconds_total"] = time.perf_counter() - t_all
    est = pythia_estimate(args, measured_ratios(results), measured_rates(results))
    results["pythia_1.4b_estimate"] = est
    print_estimate(est)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    plots = [] if args.no_plots else plot_all(results, Path(args.plots_dir))
    print(f"\nwrote {out}" + (f" and {', '.join(plots)}" if plots else "") + f"; measuring took {meta['seconds_total']:.0f} s")


if __name__ == "__main__":
    main()
