"""The cluster stage in a process of its own, for tests and timings that need one (DDP
relaunches sys.argv, so it cannot run inside pytest).

    python tests/scripts/cluster_ddp_run.py make RUN_DIR [--n 2000] [--d 12]
    python tests/scripts/cluster_ddp_run.py cluster RUN_DIR OUT_DIR DEVICES [--alpha 0.01] [--eps 1e-5]

`make` writes a planted susceptibility run (tight groups of 30-150 tokens around a N(0, I)
cloud, as tests/test_cluster_stage.py does) and the true group of every token to truth.npy;
`cluster` runs the stage on it with `DEVICES` processes on the CPU (accelerator cpu).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np


def make(run_dir: Path, n: int, d: int) -> None:
    import pyarrow as pa
    import torch

    from lit_susc import SusceptibilityResult

    rng = np.random.default_rng(1)
    sizes = rng.integers(30, 151, max(1, n // 500))
    cloud = n - int(sizes.sum())
    parts, truth = [rng.standard_normal((cloud, d))], [np.full(cloud, -1)]
    for g, s in enumerate(sizes):
        c = rng.standard_normal(d)
        parts.append(10.0 * c / np.linalg.norm(c) + 0.3 * rng.standard_normal((s, d)))
        truth.append(np.full(s, g))
    X = np.vstack(parts)
    tokens = pa.table({"doc_id": np.zeros(n, dtype=np.int64), "position": np.arange(n), "token_id": np.arange(n) % 7})
    SusceptibilityResult(chi=torch.as_tensor(X.T.copy()), components=[f"c{i}" for i in range(d)],
                         convention="seed", nbeta=10.0, tokens=tokens).save(run_dir)
    np.save(run_dir / "truth.npy", np.concatenate(truth))


def cluster(run_dir: Path, out_dir: Path, devices: int, alpha: float, eps: float) -> None:
    from lit_susc.cluster.stage import ClusterConfig, run_cluster_stage

    t = time.perf_counter()
    run_cluster_stage(ClusterConfig(input_dir=str(run_dir), output_dir=str(out_dir), alpha=alpha, eps=eps,
                                    devices=devices, accelerator="cpu"), progress=False)
    if _rank() == 0:
        summary = json.loads((out_dir / "summary.json").read_text())
        print(json.dumps({"devices": devices, "stage_s": round(time.perf_counter() - t, 3), **summary}))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("run_dir", type=Path)
    m.add_argument("--n", type=int, default=2000)
    m.add_argument("--d", type=int, default=12)
    c = sub.add_parser("cluster")
    c.add_argument("run_dir", type=Path)
    c.add_argument("out_dir", type=Path)
    c.add_argument("devices", type=int)
    c.add_argument("--alpha", type=float, default=1e-2)
    c.add_argument("--eps", type=float, default=1e-5)
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.run_dir, args.n, args.d)
    else:
        cluster(args.run_dir, args.out_dir, args.devices, args.alpha, args.eps)


if __name__ == "__main__":
    main()
