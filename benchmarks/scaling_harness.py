"""bench_scaling's timing harness: one configuration timed through the public API with the
baselines beside it, the three sweeps (observation tokens, components, model size), and a results
file redrawn. What is timed, and how, is in bench_scaling.py's docstring.

Import it after ``timing.pin_threads`` (bench_scaling.main does): it imports torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import platform
import re
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch
import transformers
from scaling_flops import (
    forward_flops,
    measured_rates,
    measured_ratios,
    mlp_flop_share,
    print_estimate,
    pythia_estimate,
    trunk_fraction,
)
from scaling_plots import plot_all
from timing import timed
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

import lit_susc
import lit_susc.config
from lit_susc.components import resolve_components
from lit_susc.config import SGLDConfig
from lit_susc.engine import make_trainer, run_sampling
from lit_susc.lm import per_token_loss
from lit_susc.sampler import SamplingData, SusceptibilitySampler

# -- the sweeps ---------------------------------------------------------------------------------

def measure_sweeps(args, argv: list[str]) -> None:
    """Run the sweeps ``args.sweeps`` asks for, print their tables and the estimate, write the
    results to ``args.out`` and the plots to ``args.plots_dir``; ``argv`` is recorded with them."""
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
    meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "precision": args.precision, "matmul_precision": args.matmul_precision,
            "torch": torch.__version__, "lightning": L.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "prefix_cache_option": None if option is None else {"where": option[0], "name": option[1],
                                                                "default": repr(option[2])},
            "prefix_cache_mode": mode, "argv": argv,
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


def replot(args) -> None:
    """Recompute what derives from the timings in ``args.replot`` (a results file), rewrite it, redraw
    its plots into ``args.plots_dir`` and reprint the estimate."""
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


# -- one configuration -------------------------------------------------------------------------

def parse_model(spec: str) -> tuple[int, int, int]:
    """(hidden, layers, heads) of a HIDDENxLAYERS[xHEADS] spec (4 heads unless given)."""
    parts = [int(x) for x in spec.lower().split("x")]
    if len(parts) not in (2, 3):
        raise SystemExit(f"model spec {spec!r}: use HIDDENxLAYERS or HIDDENxLAYERSxHEADS")
    hidden, layers = parts[:2]
    heads = parts[2] if len(parts) == 3 else 4
    return hidden, layers, heads


def build_model(spec: str, args, device):
    """A randomly initialised GPT-NeoX of ``spec`` (``parse_model``) on ``device``, in eval mode."""
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


def matmul_params(model: nn.Module) -> tuple[int, int]:
    """(P_trunk, P_head): weights of the nn.Linear layers in the blocks, and of the unembedding."""
    head = model.get_output_embeddings()
    trunk = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    return trunk, head.weight.numel()


def cache_option():
    """Where the package's prefix-cache switch lives, if it has one: (where, name, default) or None."""
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


class BatchTimer(L.Callback):
    """Lightning callback: wall time from one training batch's start to the next one's, per batch."""

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


def autocast(args, device):
    if "bf16" in args.precision:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if args.precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def run_config(model, components: list[str], obs: torch.Tensor, args, device, cache=None,
               draws: int | None = None) -> dict:
    """One estimate_susceptibilities run; returns step/draw timings and per-component medians."""
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


# -- results -----------------------------------------------------------------------------------

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
