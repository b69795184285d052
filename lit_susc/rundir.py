"""Run directories: how every stage writes its files, claims its output directory and marks it finished.

Atomic writes
    Every file is written to a temporary sibling ``<name>.<pid>.tmp<suffix>`` and renamed onto
    ``<name>`` (``atomic_path``; ``write_json``, ``write_text``, ``write_parquet``,
    ``write_safetensors``, ``write_memmap`` and ``write_shard`` on top of it). A reader sees the
    previous version or the new one, never half a file; a writer that raises removes its temporary
    and leaves the previous version as it was. A killed process may leave a temporary, which no
    reader opens (``remove_temporaries`` clears them). The pid keeps ranks that write the same file
    from writing into one temporary.

Finished
    A stage writes its finished marker after every other output (``mark_finished``): summary.json
    for sample, bif, calibrate, aux fit, aux predict and cluster; leak.json for the leak check,
    index.html for the report, train_summary.json for the tiny LM. A directory is finished exactly
    when its marker exists, and ``is_finished`` is the one function that says so: every stage, every
    reader of a stage's outputs and the pipeline ask it.

Identity
    A directory belongs to one run, identified by a JSON object (settings and digests of the inputs)
    kept in a record file. ``claim`` compares it with the run about to start: another identity is
    refused (``RunDirectoryError``, naming the keys that differ); the same identity is 'finished'
    (nothing to do) or 'resume'; no record is 'fresh'. A resumable stage records its identity when it
    claims the directory (sample and bif: run.json; aux predict: predict.json), so an interrupted run
    is recognised and resumed. The other stages record it with their outputs (aux fit: aux.json's
    config; cluster: config.json; leak check: leak.json): their record counts only once the
    directory is finished, and an unfinished directory is started over.

Shards
    A [rows, tokens] tensor is split by tokens into ``<kind>/shard-XXXXX.safetensors`` files, each
    holding its columns under the key ``<kind>`` (``write_shard``), and indexed by a list of
    ``{"start", "stop", "file"}`` entries (kept in result.json); ``read_shards`` reads any range of
    tokens, opening only the shards it overlaps. A token table is ``tokens.parquet``, or Parquet
    shards listed in such an index (``read_token_table``).

Digests
    The first 16 hex digits of a sha256: of canonical JSON (``json_digest``), of files' bytes
    (``file_digest``), of tensors by shape and two float64 moments (``tensor_digest``,
    ``weights_digest``). Identities on disk hold them, so their formulas never change.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

FINISHED_MARKER = "summary.json"
TOKENS_FILE = "tokens.parquet"


class RunDirectoryError(ValueError, RuntimeError):
    """The output directory holds another run's results, or files that belong to no run of the stage.

    A ValueError (the output directory asked for is the wrong one) and, as it always was, a RuntimeError.
    """


# ----------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; renamed onto ``path`` when the block succeeds,
    removed when it raises. The parent directory is created.

    ``suffix`` ends the temporary name, for writers that append or infer one (``np.save``: .npy,
    ``scipy.sparse.save_npz``: .npz, ``Figure.savefig``: the format).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2))


def write_parquet(path: str | Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_safetensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


@contextmanager
def write_memmap(path: str | Path, dtype, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Yield a new .npy file's array, memory-mapped, to fill; it is flushed and published at ``path``
    when the block succeeds, so arrays larger than memory are written like any other file."""
    with atomic_path(path, suffix=".npy") as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()


def remove_temporaries(directory: str | Path) -> None:
    """Delete the temporaries that killed writers left under ``directory``."""
    for path in Path(directory).rglob("*.tmp*"):
        if path.is_file():
            path.unlink()


# ----------------------------------------------------------------------------- finished, identity


def is_finished(directory: str | Path, marker: str = FINISHED_MARKER) -> bool:
    """Whether ``directory`` holds a finished run: its marker, written last, exists."""
    return (Path(directory) / marker).exists()


def require_finished(directory: str | Path, what: str, hint: str, marker: str = FINISHED_MARKER) -> None:
    """Raise FileNotFoundError unless ``directory`` holds a finished ``what``; ``hint`` says what to run."""
    if not is_finished(directory, marker):
        raise FileNotFoundError(f"{directory} holds no finished {what} ({marker} is missing); {hint}")


def mark_finished(directory: str | Path, summary: dict, marker: str = FINISHED_MARKER) -> None:
    """Write the marker (``summary`` as JSON): call it after every other output is written."""
    write_json(Path(directory) / marker, summary)


def read_summary(directory: str | Path) -> dict:
    """The summary a finished directory's marker holds."""
    return json.loads((Path(directory) / FINISHED_MARKER).read_text())


def claim(directory: str | Path, identity: dict, *, record: str, other: str,
          view: Callable[[dict], dict] | None = None, marker: str = FINISHED_MARKER, resumable: bool = True,
          known: Iterable[str] | None = None, write: bool = True) -> Literal["fresh", "resume", "finished"]:
    """Claim ``directory`` for the run ``identity``: 'fresh', 'resume' or 'finished' (module docstring).

    Args:
        record: the file that holds the directory's identity (``view`` of its JSON, when it holds more).
        other: what the directory holds when the identities differ, completing "<directory> holds ...".
        marker: the directory's finished marker (``is_finished``).
        resumable: the record is written here, when the directory is claimed, and counts at once;
            False: the stage writes it with its outputs, and it counts only once the directory is
            finished ('resume' is never returned).
        known: the entries a fresh directory may already hold besides the record (config.yaml,
            logs); any other entry is refused. None: no check.
        write: False on the processes that must not write (DDP ranks other than 0): they check only.

    Raises:
        RunDirectoryError: the record holds another identity, or a fresh directory holds foreign entries.
    """
    directory = Path(directory)
    finished = is_finished(directory, marker)
    path = directory / record
    if path.exists() and (resumable or finished):
        recorded = json.loads(path.read_text())
        recorded = view(recorded) if view is not None else recorded
        if recorded != identity:
            differ = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
            raise RunDirectoryError(f"{directory} holds {other} (differs in: {', '.join(differ)}); choose a new "
                                    "output directory, or delete this one to start over")
        return "finished" if finished else "resume"
    if known is not None and directory.exists():
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in {*known, record})
        if foreign:
            raise RunDirectoryError(f"{directory} is not empty and holds no run of this stage "
                                    f"({', '.join(foreign[:5])}); choose a new output directory")
    if resumable and write:
        write_json(path, identity)
    return "fresh"


# ----------------------------------------------------------------------------- shards


def shard_name(kind: str, index: int, suffix: str = ".safetensors") -> str:
    return f"{kind}/shard-{index:05d}{suffix}"


def write_shard(directory: Path, kind: str, index: int, values: Tensor, metadata: dict[str, str] | None = None) -> str:
    """Write shard ``index`` of ``kind`` (its columns, under the key ``kind``); returns its name in ``directory``."""
    name = shard_name(kind, index)
    write_safetensors(directory / name, {kind: values}, metadata)
    return name


def read_shards(directory: str | Path, shards: list[dict], key: str, start: int = 0, stop: int | None = None, *,
                rows: int, dtype: torch.dtype, file_key: str = "file", components: list[int] | None = None) -> Tensor:
    """Columns [start, stop) (stop None: to the end) of the tensor ``key`` sharded as ``shards`` describes,
    as [rows, stop - start], reading only the shards it overlaps; ``components`` picks rows. ``rows``
    and ``dtype`` shape the result when no shard overlaps."""
    directory = Path(directory)
    parts = []
    for shard in shards:
        lo = max(start, shard["start"])
        hi = shard["stop"] if stop is None else min(stop, shard["stop"])
        if lo >= hi:
            continue
        if file_key not in shard:
            raise FileNotFoundError(f"{directory} holds no {key} (written by an older lit-susc); rerun the stage "
                                    "that wrote it")
        with safe_open(str(directory / shard[file_key]), framework="pt") as f:
            part = f.get_slice(key)[:, lo - shard["start"]:hi - shard["start"]]
        parts.append(part if components is None else part[components])
    return torch.cat(parts, dim=1) if parts else torch.zeros(rows, 0, dtype=dtype)


def read_token_table(directory: str | Path, shards: list[dict] | None = None) -> pa.Table:
    """The token table of ``directory``: the Parquet ``shards`` in order when an index lists them, else
    ``tokens.parquet``."""
    directory = Path(directory)
    if shards is not None:
        return pa.concat_tables([pq.read_table(directory / s["file"]) for s in shards])
    if not (directory / TOKENS_FILE).exists():
        raise FileNotFoundError(f"{directory} has no token table ({TOKENS_FILE} or tokens/shard-*.parquet)")
    return pq.read_table(directory / TOKENS_FILE)


# ----------------------------------------------------------------------------- digests


def _short(h) -> str:
    return h.hexdigest()[:16]


def json_digest(obj) -> str:
    """Of ``obj`` as JSON with sorted keys (``str`` of what JSON cannot hold)."""
    return _short(hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()))


def file_digest(*paths: str | Path) -> str:
    """Of the files' bytes, one after the other."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return _short(h)


def tensor_digest(tensors: Iterable[Tensor], names: Iterable[str] | None = None) -> str:
    """Of each tensor in turn: a floating one by ``[name:]shape:sum:sum of squares`` (float64, 13
    significant digits), any other by its bytes (after ``name:``, with names)."""
    h = hashlib.sha256()
    prefixes = (f"{name}:" for name in names) if names is not None else itertools.repeat("")
    for prefix, t in zip(prefixes, tensors):
        t = t.detach()
        if t.is_floating_point():
            # Two moments in float64 identify weights well enough, and stay cheap for billions.
            t64 = t.double()
            h.update(f"{prefix}{tuple(t.shape)}:{t64.sum().item():.12e}:{t64.square().sum().item():.12e}".encode())
        else:
            h.update(prefix.encode())
            h.update(t.cpu().contiguous().numpy().tobytes())
    return _short(h)


def weights_digest(model: nn.Module, named: bool = True) -> str:
    """``tensor_digest`` of the parameters in name order, with their names (a base model's identity:
    aux.json) or, ``named=False``, without (a sampling run's model_digest: run.json)."""
    params = sorted(model.named_parameters(), key=lambda item: item[0])
    return tensor_digest((p for _, p in params), (n for n, _ in params) if named else None)
