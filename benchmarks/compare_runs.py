"""Are two runs' outputs bitwise identical? (issue 12: a refactor keeps every number where it was.)

Walks two output directories (a pipeline's, a stage's, or a BIF run's) and compares every result
file they share, by content: safetensors tensor by tensor (dtype, shape and bytes), Parquet table
by table, .npy/.npz arrays, and JSON value by value. Keys that record when, where or how long a
run took (wall times, absolute paths, library versions) are not results and are left out; resume
state, caches, logs, plots and the HTML report are left out too (they are derived from the files
compared, or record time), and so are the ``.sha256`` checksums beside the files (a run from before
they existed has none; the files themselves are compared).

    python run.py pipeline --config configs/quickstart.yaml                     # on the old commit,
    mv runs/quickstart runs/quickstart-before                                   # then on the new one
    python run.py pipeline --config configs/quickstart.yaml
    python benchmarks/compare_runs.py runs/quickstart-before runs/quickstart

Prints one line per file (identical / differs, with what) and exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

SKIPPED_PARTS = {"state", "cache", "lightning_logs", "report", "pipeline", "wandb", "tiny_lm"}
# .sha256: the checksums beside result files (lit_susc.rundir), which a run from before them lacks
SKIPPED_SUFFIXES = {".png", ".html", ".md", ".yaml", ".log", ".tmp", ".csv", ".sha256"}
# JSON keys that say when, where or how long, not what was computed
VOLATILE_KEYS = ("seconds", "time", "path", "dir", "version", "started", "host", "date", "draw_cost",
                 "created", "command")


def result_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()
            and not SKIPPED_PARTS & set(p.relative_to(root).parts[:-1]) and p.suffix not in SKIPPED_SUFFIXES
            and p.name != ".lock"}


# JSON keys that hold digests of files compared on their own (train_summary.json's sha256)
DIGEST_KEYS = ("sha256",)


def _volatile(key: str) -> bool:
    return key.endswith("_s") or key in DIGEST_KEYS or any(word in key.lower() for word in VOLATILE_KEYS)


def json_differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if _volatile(str(key)):
                continue
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'second' if key in b else 'first'}")
            else:
                out += json_differences(a[key], b[key], f"{where}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_differences(x, y, f"{where}[{i}]")]
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return [] if a == b or both_nan else [f"{where}: {str(a)[:60]} != {str(b)[:60]}"]


def array_difference(a: np.ndarray, b: np.ndarray) -> str | None:
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype}{list(a.shape)} != {b.dtype}{list(b.shape)}"
    if a.tobytes() == b.tobytes():
        return None
    if np.issubdtype(a.dtype, np.number):
        return f"max |difference| {np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))):.3g}"
    return "values differ"


def column_difference(a, b) -> str | None:
    """Numeric columns compared by their bytes (a NaN where the draws are not taken equals itself),
    others by value."""
    import pyarrow as pa

    if pa.types.is_floating(a.type) or pa.types.is_integer(a.type):
        return array_difference(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False))
    return None if a.equals(b) else "values differ"


def compare_file(a: Path, b: Path) -> list[str]:
    """What differs between two result files (empty: identical)."""
    if a.suffix == ".safetensors":
        from safetensors.numpy import load_file

        x, y = load_file(str(a)), load_file(str(b))
        if set(x) != set(y):
            return [f"tensors {sorted(x)} != {sorted(y)}"]
        return [f"{key}: {d}" for key in sorted(x) if (d := array_difference(x[key], y[key]))]
    if a.suffix == ".parquet":
        import pyarrow.parquet as pq

        x, y = pq.read_table(a), pq.read_table(b)
        if x.schema.names != y.schema.names:
            return [f"columns {x.schema.names} != {y.schema.names}"]
        return [f"column {name}: {d}" for name in x.schema.names
                if not _volatile(name) and (d := column_difference(x.column(name), y.column(name)))]
    if a.suffix == ".npy":
        d = array_difference(np.load(a), np.load(b))
        return [d] if d else []
    if a.suffix == ".npz":
        x, y = np.load(a), np.load(b)
        return [f"{key}: {d}" for key in sorted(set(x.files) | set(y.files))
                if (d := array_difference(x[key], y[key]) if key in x.files and key in y.files else "missing")]
    if a.suffix == ".json":
        return json_differences(json.loads(a.read_text()), json.loads(b.read_text()))
    return [] if a.read_bytes() == b.read_bytes() else ["bytes differ"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    a, b = result_files(args.before), result_files(args.after)
    failed = False
    for rel in sorted(a | b):
        if rel not in a or rel not in b:
            print(f"MISSING   {rel} (only in {'after' if rel in b else 'before'})")
            failed = True
            continue
        differences = compare_file(args.before / rel, args.after / rel)
        failed |= bool(differences)
        print(f"{'DIFFERS' if differences else 'identical'} {rel}" + ("".join(f"\n    {d}" for d in differences)))
    print(f"\n{len(a & b)} files compared: {'some differ' if failed else 'all identical'}")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
