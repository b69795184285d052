"""Reliability per second of the draw schedules on the quickstart model (issue 11's benchmark).

For each setting, the quickstart's model, data and sampler (lr 1e-3, nbeta 100, localization 300)
sample four representative components (a block-0 head, a block-3 head, an MLP, the unembedding)
with 4 chains x 200 draws; each component is its own run, timed on its own (CPU time of the one
thread, pilot included, which a shared machine changes less than wall time). From each run's
estimated reliability rho (lit_susc.covariance: the predicted split-half Pearson) the
Spearman-Brown formula gives the factor n = 9 (1 - rho) / rho by which its draws must grow for a
split-half Pearson of 0.9, so the time to 0.9 is n times the run's time (pilot included: an
approximation, since the pilot's cost does not grow with the draws). Setting ``auto`` runs
with two seeds, whose measured Pearson is printed beside the predicted one.

    OMP_NUM_THREADS=1 python benchmarks/bench_reliability.py                       # every setting
    OMP_NUM_THREADS=1 python benchmarks/bench_reliability.py --settings 1 auto     # some of them
    OMP_NUM_THREADS=1 python benchmarks/bench_reliability.py --settings auto --seeds 1 --components layers.1.mlp
    python benchmarks/bench_reliability.py --report                                # the table only

Runs are kept under runs/bench_reliability/ (finished ones are reused, so settings can be run in
separate invocations; an interrupted one is started over, so that its time is whole); the table is printed and written to runs/bench_reliability/table.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

COMPONENTS = ["layers.0.heads.0", "layers.3.heads.0", "layers.1.mlp", "unembed"]
SETTINGS = {
    "1": {"steps_between_draws": 1, "burn_in": 50},
    "4": {"steps_between_draws": 4, "burn_in": 50},
    "16": {"steps_between_draws": 16, "burn_in": 50},
    "auto": {"steps_between_draws": "auto", "burn_in": "auto"},
    # calibrate's recommendation on this model (configs/calibrate_quickstart.yaml): lr 2e-3
    "auto-lr2e-3": {"steps_between_draws": "auto", "burn_in": "auto", "lr": 2e-3},
}
ROOT = Path("runs/bench_reliability")


def quickstart_model() -> str:
    """The quickstart's trained tiny LM (trained once, then reused)."""
    import yaml

    from lit_susc.tinylm import TinyLMConfig, train_tiny_lm

    config = yaml.safe_load(Path("configs/quickstart.yaml").read_text())["sample"]["model"]
    return str(train_tiny_lm(ROOT / "tiny_lm", TinyLMConfig(**config["tiny_lm"]), source=config["data"]["source"]))


def run_one(pretrained: str, setting: str, component: str, seed: int) -> dict:
    """One component's run of one setting: wall time, reliability, the chosen schedule."""
    import yaml

    from lit_susc.config import ComputeConfig, SGLDConfig
    from lit_susc.engine import make_trainer, run_sampling
    from lit_susc.lm import TextDataConfig, lm_susceptibilities

    out = ROOT / f"sbd-{setting}" / f"seed-{seed}" / component
    record = out / "bench.json"
    if record.exists():
        return json.loads(record.read_text())
    if out.exists():  # an interrupted run: resuming it would time only its last part
        shutil.rmtree(out)
    config = yaml.safe_load(Path("configs/quickstart.yaml").read_text())["sample"]["model"]
    sgld = SGLDConfig(**{**config["sgld"], "chains": 4, "draws": 200, "seed": seed, **SETTINGS[setting]})
    start, cpu = time.perf_counter(), time.process_time()
    module = lm_susceptibilities(pretrained=pretrained, components=[component], data=TextDataConfig(**config["data"]),
                                 sgld=sgld, output_dir=str(out), compute=ComputeConfig(**config["compute"]))
    trainer = make_trainer({"accelerator": "cpu", "enable_progress_bar": False}, out, rounds=sgld.rounds)
    res = run_sampling(module, trainer, tokens=module.tokens, identity_extra=module.describe())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    row = {"setting": setting, "component": component, "seed": seed, "seconds": seconds, "cpu_seconds": cpu,
           "reliability": res.reliability[component], **res.schedule[component],
           "ess": res.diagnostics[component]["ess"], "rhat": res.diagnostics[component]["rhat"]}
    record.write_text(json.dumps(row))
    np.save(out / "chi.npy", res.chi.numpy())
    return row


def time_to_09(row: dict) -> float:
    """CPU seconds to a split-half Pearson of 0.9 by Spearman-Brown (CPU time: one thread, so the
    machine's other load changes it less than the wall time)."""
    rho = row["reliability"]
    return float("inf") if not rho > 0 else row["cpu_seconds"] * 9 * (1 - rho) / rho


def report() -> str:
    rows = [json.loads(p.read_text()) for p in sorted(ROOT.glob("sbd-*/seed-*/*/bench.json"))]
    if not rows:
        return "no finished runs under " + str(ROOT)
    lines = [("| steps_between_draws | component | CPU s (4 x 200 draws) | reliability | chosen (burn-in, thinning) | "
             "CPU s to split-half 0.9 |"), "|---|---|---|---|---|---|"]
    medians = {}
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting and r["seed"] == 0 and "cpu_seconds" in r]
        if not mine:
            continue
        for r in mine:
            lines.append(f"| {setting} | {r['component']} | {r['cpu_seconds']:.0f} | {r['reliability']:.2f} | "
                         f"{r['burn_in']}, {r['steps_between_draws']} | {time_to_09(r):.0f} |")
        medians[setting] = statistics.median(time_to_09(r) for r in mine)
    lines.append("")
    base = medians.get("1")
    for setting, m in medians.items():
        lines.append(f"median CPU time to 0.9, steps_between_draws {setting}: {m:.0f} s"
                     + (f" ({base / m:.2f}x faster than 1)" if base and setting != "1" else ""))
    pairs = [(r, q) for r in rows for q in rows if r["setting"] == q["setting"] and r["component"] == q["component"]
             and r["seed"] == 0 and q["seed"] == 1]
    if pairs:
        lines += ["", "| setting | component | predicted split-half (sqrt of rho_0 rho_1) | measured Pearson (seeds 0, 1) |",
                  "|---|---|---|---|"]
        for r, q in pairs:
            a = np.load(ROOT / f"sbd-{r['setting']}" / "seed-0" / r["component"] / "chi.npy").ravel()
            b = np.load(ROOT / f"sbd-{q['setting']}" / "seed-1" / q["component"] / "chi.npy").ravel()
            lines.append(f"| {r['setting']} | {r['component']} | {np.sqrt(r['reliability'] * q['reliability']):.2f} | "
                         f"{np.corrcoef(a, b)[0, 1]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--components", nargs="*", default=COMPONENTS)
    parser.add_argument("--seeds", nargs="*", type=int, default=None,
                        help="seeds to run (default: 0, and 0 and 1 for auto)")
    parser.add_argument("--report", action="store_true", help="print the table of the finished runs only")
    args = parser.parse_args()
    if not args.report:
        pretrained = quickstart_model()
        for setting in args.settings:
            for seed in args.seeds if args.seeds is not None else ((0, 1) if setting == "auto" else (0,)):
                for component in args.components:
                    row = run_one(pretrained, setting, component, seed)
                    print(f"bench: {setting} seed {seed} {component}: {row['seconds']:.0f} s, "
                          f"reliability {row['reliability']:.3f}", flush=True)
    table = report()
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
