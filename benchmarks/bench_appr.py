"""ACL push + sweep: lit_susc (numba) vs LocalGraphClustering 0.6.1 (C++), same graph/seeds/alpha.

    pip install --no-deps localgraphclustering==0.6.1   (plus its imports, e.g. plotly)
    python benchmarks/bench_appr.py [--n 20000] [--seeds 20] [--alpha 1e-3] [--eps 1e-5 1e-6]

Conventions: both use the lazy walk (p += alpha r; r(u) <- (1-alpha) r/2; neighbours get
(1-alpha) r w / (2 d)), so alpha is passed unchanged; LGC's rho is our eps. LGC's weighted
push re-queues the pushed node against its *unweighted* degree (its source), so on weighted
graphs the two p vectors differ slightly; on the unweighted graph the rules coincide.
Sweep sets (no size limits): ours on our p vs LGC's C++ sweep on its p, and both sweeps on
LGC's p (same input, so any difference is the sweep itself).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lit_susc.cluster.appr import PushWorkspace, _push, _reset, graph_arrays
from lit_susc.cluster.knn import knn_graph
from lit_susc.cluster.sweep import _sweep_nodes
from lit_susc.cluster.whiten import whiten


def planted(n: int, d: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(30, 200, max(1, n // 2000))
    groups = []
    for s in sizes:
        c = rng.standard_normal(d)
        groups.append(6.0 * c / np.linalg.norm(c) + 0.3 * rng.standard_normal((s, d)))
    return np.vstack([rng.standard_normal((n - sizes.sum(), d))] + groups)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=45)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, nargs="+", default=[1e-5, 1e-6])
    args = ap.parse_args()

    from localgraphclustering.cpp import aclpagerank_cpp, aclpagerank_weighted_cpp, sweepcut_cpp

    Z, _ = whiten(planted(args.n))
    rng = np.random.default_rng(1)
    seeds = rng.choice(args.n, args.seeds, replace=False)
    for kernel in ["gaussian_local", "unweighted"]:
        A = knn_graph(Z, args.k, kernel=kernel)
        ip, ix, w, deg = graph_arrays(A)
        n = len(deg)
        ws = PushWorkspace(n)
        inset = np.zeros(n, np.bool_)
        vol_g = deg.sum()
        # warm the JIT outside the timings
        _reset(_push(ip, ix, w, deg, seeds[:1], 0.5, 0.1, 10, ws.p, ws.r, ws.seen, ws.inq, ws.queue, ws.touched)[0],
               ws.p, ws.r, ws.seen, ws.inq, ws.touched)
        for eps in args.eps:
            t_ours = t_lgc = t_sw_ours = t_sw_lgc = 0.0
            same_own = same_on_lgc_p = 0
            jac, pushes, mass_ours, mass_lgc, l1 = [], [], [], [], []
            for s in seeds:
                sa = np.array([s], np.int64)
                t = time.perf_counter()
                nt, npush = _push(ip, ix, w, deg, sa, args.alpha, eps, np.iinfo(np.int64).max,
                                  ws.p, ws.r, ws.seen, ws.inq, ws.queue, ws.touched)
                t_ours += time.perf_counter() - t
                p_ours = ws.p.copy()
                _reset(nt, ws.p, ws.r, ws.seen, ws.inq, ws.touched)
                pushes.append(npush)
                t = time.perf_counter()
                if kernel == "unweighted":
                    _, xids, vals = aclpagerank_cpp(n, ip, ix, args.alpha, eps, sa, 2**62, xlength=n)
                else:
                    _, xids, vals = aclpagerank_weighted_cpp(n, ip, ix, w, args.alpha, eps, sa, 2**62, xlength=n)
                t_lgc += time.perf_counter() - t
                p_lgc = np.zeros(n)
                p_lgc[xids] = vals
                mass_ours.append(p_ours.sum())
                mass_lgc.append(p_lgc.sum())
                l1.append(np.abs(p_ours - p_lgc).sum())
                t = time.perf_counter()
                S1, _ = _sweep_nodes(ip, ix, w, deg, vol_g, ws.touched[:nt][p_ours[ws.touched[:nt]] > 0], p_ours, 1, n, inset)
                t_sw_ours += time.perf_counter() - t
                S2, _ = _sweep_nodes(ip, ix, w, deg, vol_g, xids, p_lgc, 1, n, inset)
                t = time.perf_counter()
                _, S3, _ = sweepcut_cpp(n, ip, ix, w, xids, len(xids), vals / deg[xids], 0, deg)
                t_sw_lgc += time.perf_counter() - t
                a, b, c = set(S1.tolist()), set(S2.tolist()), set(S3.tolist())
                same_own += a == c
                same_on_lgc_p += b == c
                jac.append(len(a & c) / max(1, len(a | c)))
            m = len(seeds)
            print(f"{kernel:>14} N={n} alpha={args.alpha:g} eps={eps:g} (eps*vol(G) = {eps * deg.sum():.2g}): "
                  f"pushes/seed ours {np.mean(pushes):.3g}; sum(p) ours {np.mean(mass_ours):.4f}, LGC {np.mean(mass_lgc):.4f}; "
                  f"mean ||p_ours - p_LGC||_1 {np.mean(l1):.2g}", flush=True)
            print(f"{'':>14} push ms/seed ours {1e3 * t_ours / m:.1f}, LGC {1e3 * t_lgc / m:.1f} "
                  f"(LGC/ours {t_lgc / t_ours:.2f}); sweep ms/seed ours {1e3 * t_sw_ours / m:.1f}, "
                  f"LGC {1e3 * t_sw_lgc / m:.1f}; sweep sets identical: each on its own p {same_own}/{m} "
                  f"(mean Jaccard {np.mean(jac):.3f}), both on LGC's p {same_on_lgc_p}/{m}", flush=True)


if __name__ == "__main__":
    main()
