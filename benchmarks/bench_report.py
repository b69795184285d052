"""The report at scale: wall time and peak memory of ``build_report`` on a synthetic clustering.

    OMP_NUM_THREADS=1 python benchmarks/bench_report.py [--tokens 1000000] [--clusters 10000] [--layers 24] [--heads 16]
        [--dir DIR]    (DIR keeps the input between runs; default: a temporary directory)

Input: tests/test_report_scale.write_clustering, prepared in a child process (its memory is not the
report's): a finished sampling run of --tokens random tokens with standard-normal chi on a
--layers x --heads transformer's components (its heads, MLPs, embed and unembed; 24 x 16 is
Pythia-1.4B's 410), clustered into --clusters clusters of sizes ~ 1/rank. The report is built in a
second child process, which prints its wall time, its RSS after importing lit_susc.report, its
peak RSS (getrusage ru_maxrss) and its peak anonymous memory (RssAnon, sampled every 10 ms: the
RSS less file-backed pages, such as the pages of chi's shards that reading a block of them maps);
this one prints them with the ratio of the peak RSS to the size of labels.parquet, and how many
index and cluster pages were written.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _status_mib(key: str) -> float:
    """A field of /proc/self/status, in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields[key].split()[0]) / 2**10


class PeakAnonymous(threading.Thread):
    """The largest RssAnon seen, sampled every 10 ms until ``stop``."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self._done = 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, _status_mib("RssAnon"))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def components(layers: int, heads: int) -> list[str]:
    """A transformer's component names in run order: each layer's heads, then its MLP; embed and unembed."""
    return ([f"layers.{l}.heads.{h}" for l in range(layers) for h in range(heads)]
            + [f"layers.{l}.mlp" for l in range(layers)] + ["embed", "unembed"])


def prepare(run: Path, tokens: int, clusters: int, layers: int, heads: int) -> None:
    from test_report_scale import write_clustering

    write_clustering(run, tokens, clusters, components=components(layers, heads))


def render(run: Path) -> None:
    from lit_susc.report import build_report

    imported = _status_mib("VmRSS")
    anonymous = PeakAnonymous()
    anonymous.start()
    start = time.perf_counter()
    build_report(run.parent / "report", cluster_dir=run / "clusters", sample_dir=run)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(json.dumps({"wall_s": wall, "imported_rss_mib": imported, "peak_rss_mib": peak,
                      "peak_anonymous_mib": anonymous.stop()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--child", choices=["prepare", "render"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "prepare":
        return prepare(args.dir / "run", args.tokens, args.clusters, args.layers, args.heads)
    if args.child == "render":
        return render(args.dir / "run")

    with tempfile.TemporaryDirectory() as scratch:
        root = args.dir or Path(scratch)
        run = root / "run"
        # a kept input is reused only if it is the one asked for
        shape = {"tokens": args.tokens, "clusters": args.clusters, "layers": args.layers, "heads": args.heads}
        made = root / "input.json"
        if not (run / "clusters" / "summary.json").exists() or json.loads(made.read_text()) != shape:
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--child", "prepare", "--dir", str(root),
                            *(f"--{k}={v}" for k, v in shape.items())], check=True)
            made.write_text(json.dumps(shape))
            print(f"input prepared in {time.perf_counter() - start:.0f} s")
        done = subprocess.run([sys.executable, __file__, "--child", "render", "--dir", str(root)], check=True,
                              stdout=subprocess.PIPE, text=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        labels_mib = (run / "clusters" / "labels.parquet").stat().st_size / 2**20
        report = root / "report"
        n_index = len(list(report.glob("index*.html")))
        n_pages = len(list((report / "clusters").glob("*.html")))
        print(f"{args.tokens} tokens, {args.clusters} clusters, {len(components(args.layers, args.heads))} components\n"
              f"  report: {figures['wall_s']:.1f} s; {n_index} index pages, {n_pages} cluster pages\n"
              f"  peak RSS {figures['peak_rss_mib']:.0f} MiB ({figures['imported_rss_mib']:.0f} MiB after imports; "
              f"peak anonymous {figures['peak_anonymous_mib']:.0f} MiB); labels.parquet {labels_mib:.1f} MiB; "
              f"peak RSS / labels.parquet = {figures['peak_rss_mib'] / labels_mib:.1f}")


if __name__ == "__main__":
    main()
