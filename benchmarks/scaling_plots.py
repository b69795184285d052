"""bench_scaling's plots: draw time against observation tokens, components and model size, from a
results file (scaling_tokens.png, scaling_components.png, scaling_models.png)."""

from __future__ import annotations

import re
from pathlib import Path


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
        fits = sw["tokens"]["fits"]
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


def component_depth(name: str, n_layers: int) -> float:
    """Position along the forward: embed 0, block l at l + 1, unembed n_layers + 1."""
    if name == "embed":
        return 0
    if name == "unembed":
        return n_layers + 1
    m = re.match(r"layers\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else float("nan")
