"""bench_scaling's cost model: forward FLOPs of a GPT-NeoX context, what a prefix cache leaves to
recompute, and the FLOPs and H200-hours of the spec's Pythia-1.4B ground-truth run.

Arithmetic only (no torch), so ``bench_scaling.py --estimate-only`` runs anywhere in a moment.
The FLOP formula and what is counted are in bench_scaling.py's docstring ("FLOPs").
"""

from __future__ import annotations

import re

SPEC_QUOTE = ("Computing the covariances for 6 million susceptibilities on Pythia 1.4b required tens of thousands "
              "of forward and backward passes on the model, and roughly 5000 H200 hours.")


SPEC_WHERE = ("spec (shared/seeds/000_6d20143884ac4a12.txt, line 113), section 'Working with Susceptibility Data'; "
              "line 127 speaks of 'the 4 million susceptibilities collected in Gordon et al. (2026)'")


# -- FLOP counting ---------------------------------------------------------------------------

def forward_flops(p_trunk: int, p_head: int, n_layer: int, d: int, T: int, contexts: float,
                  head_positions: int | None = None, trunk_fraction: float = 1.0) -> float:
    """FLOPs of a forward over ``contexts`` contexts of T positions: T * (2 P_trunk + 2 n_layer T d) in the trunk
    (times ``trunk_fraction``) + ``head_positions`` (default T - 1) * 2 P_head in the head."""
    head_positions = T - 1 if head_positions is None else head_positions
    trunk = T * (2 * p_trunk + 2 * n_layer * T * d)
    return contexts * (trunk_fraction * trunk + head_positions * 2 * p_head)


def mlp_flop_share(d: int, ff: int, T: int) -> float:
    """The MLP's share of a block's forward FLOPs per position: 2 (2 d ff) / (2 (4 d^2 + 2 d ff) + 2 T d)."""
    return 2 * d * ff / (4 * d * d + 2 * d * ff + T * d)


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


# -- the Pythia-1.4B estimate ----------------------------------------------------------------

PYTHIA_14B = {"hidden": 2048, "layers": 24, "heads": 16, "intermediate": 8192, "vocab": 50304}


def pythia_components(layers: int, heads: int, mlp_share: float) -> list[tuple[str, float]]:
    """(name, fraction of trunk FLOPs a prefix cache leaves to recompute) of the spec's 410 components."""
    names = ["embed"] + [f"layers.{layer}.{part}" for layer in range(layers)
                         for part in [f"heads.{h}" for h in range(heads)] + ["mlp"]] + ["unembed"]
    return [(name, trunk_fraction(name, layers, mlp_share)) for name in names]


def pythia_estimate(args, ratios: dict | None = None, rates: dict | None = None) -> dict:
    """FLOPs and H200-hours of the spec's run. ``args``: bench_scaling's "Pythia-1.4B estimate"
    options (obs_tokens, est_context, est_batch, h200_peak, h200_fp32_peak, util); ``ratios``:
    lit-susc/plain cost per FLOP measured here; ``rates``: achieved FLOP/s of draw and step measured
    on a GPU (then hours follow without an assumed utilisation)."""
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
