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

Checksums
    Every file the project writes and later trusts carries the sha256 of its bytes, and every reader
    checks it before using the file. The writers (``write_json``, ``write_parquet``,
    ``write_safetensors``, ``write_shard``, ``write_memmap``, ``copy_file``; ``atomic_path`` with
    ``checksum=True`` for any other) hash the finished temporary, remove the previous sidecar, rename the
    file into place, then write the sidecar ``<name>.sha256`` beside it, atomically, in ``sha256sum``'s
    format (``sha256sum -c <name>.sha256`` checks a file by hand). A sidecar holds the digest of the
    whole file, so a flipped byte anywhere, header or data, and a truncation are caught, whatever the
    format. A process killed between rename and sidecar leaves a complete file without a sidecar, never
    a file beside another version's digest. The readers (``verify``, ``reading``, ``read_json``,
    ``read_parquet``, ``read_safetensors``, ``read_shards``, ``read_token_table``, ``read_summary``,
    ``claim``) raise ``CorruptFileError`` when the bytes differ from the digest or the file cannot be
    parsed, naming the file and what to do (``remedy``: ``stage_remedy`` for a stage's outputs; a unit
    of a sampling run: lit_susc.unit_state). A file without a sidecar, written before checksums
    existed, is read unchecked, so finished run directories from older versions stay readable. A
    process verifies a large file once: it is not hashed again while its size, inode, mtime and ctime
    and its sidecar's stay the same, so reading a large shard in chunks costs one pass over it.
    Plots, HTML, Markdown and the YAML configs are written without a checksum: nothing reads them back.

Digests
    The first 16 hex digits of a sha256: of canonical JSON (``json_digest``), of files' bytes
    (``file_digest``), of tensors by shape and two float64 moments (``tensor_digest``,
    ``weights_digest``). Identities on disk hold them, so their formulas never change.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

FINISHED_MARKER = "summary.json"
TOKENS_FILE = "tokens.parquet"


class RunDirectoryError(ValueError, RuntimeError):
    """The output directory holds another run's results, or files that belong to no run of the stage.

    A ValueError (the output directory asked for is the wrong one) and, as it always was, a RuntimeError.
    """


class CorruptFileError(ValueError):
    """A file the project wrote no longer holds what it wrote: its bytes differ from the sha256
    recorded beside it, or it cannot be parsed. The message names the file and what to do.

    A ValueError, so the command line reports it as one ``lit-susc: error:`` line (exit status 2).
    """


class DiskFullError(ValueError):
    """A file could not be written: its disk (or the user's quota) is full. The message names the file.

    A ValueError, so the command line reports it as one ``lit-susc: error:`` line (exit status 2).
    """


_FULL = (errno.ENOSPC, errno.EDQUOT)
"""The errnos of a write that found no space: the disk is full, or the user's quota (clusters' usual case)."""


# ----------------------------------------------------------------------------- atomic writes


def temporary_path(path: str | Path, suffix: str = "") -> Path:
    """The temporary sibling this process writes ``path`` through: ``<name>.<pid>.tmp<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp{suffix}")


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", checksum: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; renamed onto ``path`` when the block succeeds,
    removed when it raises. The parent directory is created.

    ``suffix`` ends the temporary name, for writers that append or infer one (``np.save``: .npy,
    ``scipy.sparse.save_npz``: .npz, ``Figure.savefig``: the format). ``checksum``: record the
    file's sha256 beside it (module docstring, Checksums). A write that finds the disk full raises
    DiskFullError naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        if checksum:
            digest = sha256_of(tmp)
            # the previous version's digest must never stand beside this version
            checksum_path(path).unlink(missing_ok=True)
        tmp.replace(path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # Writers that wrap the OS's error in their own (safetensors: "... (os error 28)") keep its text;
        # a DiskFullError of a file written inside this block already names that file.
        full = getattr(err, "errno", None) in _FULL or any(os.strerror(code) in str(err) for code in _FULL)
        if full and not isinstance(err, DiskFullError):
            reason = getattr(err, "strerror", None) or " ".join(str(err).split())[:200]
            raise DiskFullError(f"cannot write {path}: {reason} (the disk or your quota is full); free space on the "
                                f"disk of {path.parent} and rerun the command") from err
        raise
    if checksum:
        _write_checksum(path, digest)


def write_text(path: str | Path, text: str, checksum: bool = False) -> None:
    with atomic_path(path, checksum=checksum) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2), checksum=True)


def write_parquet(path: str | Path, table: pa.Table) -> None:
    with atomic_path(path, checksum=True) as tmp:
        pq.write_table(table, tmp)


def write_safetensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path, checksum=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


@contextmanager
def write_memmap(path: str | Path, dtype, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Yield a new .npy file's array, memory-mapped, to fill; it is flushed and published at ``path``
    when the block succeeds, so arrays larger than memory are written like any other file."""
    with atomic_path(path, suffix=".npy", checksum=True) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()


@contextmanager
def scratch_memmap(path: str | Path, dtype, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Yield a memory-mapped .npy array that lives only for the block: intermediate results larger
    than memory. Its file is ``path``'s temporary (``atomic_path``'s name, which ``claim`` accepts
    and ``remove_temporaries`` deletes after a kill); it is removed when the block ends, and nothing
    is published at ``path``."""
    tmp = temporary_path(path, ".npy")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(source: str | Path, destination: str | Path, remedy: str) -> None:
    """Copy ``source`` (verified first: ``remedy`` says what to do when it is corrupt) to ``destination``,
    with its checksum."""
    source = verify(source, remedy)
    with atomic_path(destination, checksum=True) as tmp:
        shutil.copyfile(source, tmp)


def remove_temporaries(directory: str | Path) -> None:
    """Delete the temporaries that killed writers left under ``directory``."""
    for path in Path(directory).rglob("*.tmp*"):
        if path.is_file():
            path.unlink()


# ----------------------------------------------------------------------------- checksums

CHECKSUM_SUFFIX = ".sha256"
_VERIFIED: dict[str, tuple] = {}
"""The large files this process has verified, by absolute path: their and their sidecars' stat then."""
_CACHE_BYTES = 1 << 24
"""Files at least this large are verified once per process (``verify``). Hashing one takes longer than
a file timestamp's granularity (a few ms), so a change after its verification shows in its mtime;
smaller files, cheap to hash, are hashed at every read."""
_UNREADABLE = (SafetensorError, pa.ArrowException, OSError, ValueError, EOFError, zipfile.BadZipFile)
"""What the parsers (json, pyarrow, safetensors, numpy, zip) raise on a truncated or damaged file."""
_NOT_DAMAGE = (CorruptFileError, FileNotFoundError, PermissionError, IsADirectoryError)


def checksum_path(path: str | Path) -> Path:
    """The sidecar that holds ``path``'s sha256: ``<name>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file's bytes (64 hex digits), read in pieces."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_checksum(path: Path, digest: str) -> None:
    write_text(checksum_path(path), f"{digest}  {path.name}\n")  # sha256sum's format


def _stamp(path: Path, sidecar: Path) -> tuple:
    a, b = path.stat(), sidecar.stat()
    return a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns, b.st_ino, b.st_mtime_ns, b.st_ctime_ns


def verify(path: str | Path, remedy: str) -> Path:
    """``path``, once its bytes match the sha256 recorded beside it; a file without a sidecar
    (written before checksums existed) is returned unchecked.

    Raises:
        CorruptFileError: the bytes differ; the message names the file and ends in ``remedy``.
    """
    path = Path(path)
    sidecar = checksum_path(path)
    try:
        recorded = sidecar.read_text(encoding="utf-8", errors="replace").split()[:1]
    except FileNotFoundError:
        return path
    key, stamp = os.path.abspath(path), _stamp(path, sidecar)
    if _VERIFIED.get(key) == stamp:
        return path
    if recorded != [sha256_of(path)]:
        raise CorruptFileError(f"{path} is corrupt: its bytes differ from the sha256 recorded when it was written "
                               f"({sidecar.name}); {remedy}")
    if stamp[2] >= _CACHE_BYTES:
        _VERIFIED[key] = stamp
    return path


@contextmanager
def reading(path: str | Path, remedy: str) -> Iterator[Path]:
    """Yield ``path`` verified (``verify``) for the block to parse, and nothing else: a parser's error
    in the block (a truncated or damaged file) becomes a CorruptFileError naming the file."""
    path = verify(path, remedy)
    try:
        yield path
    except _NOT_DAMAGE:
        raise
    except _UNREADABLE as err:
        reason = " ".join(str(err).split())[:200]  # one line: the CLI prints one
        raise CorruptFileError(f"{path} is corrupt: it cannot be read ({type(err).__name__}: {reason}); "
                               f"{remedy}") from err


def read_json(path: str | Path, remedy: str):
    """A JSON file, verified (``reading``)."""
    with reading(path, remedy) as checked:
        return json.loads(checked.read_text(encoding="utf-8"))


def read_parquet(path: str | Path, remedy: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet table, verified (``reading``)."""
    with reading(path, remedy) as checked:
        return pq.read_table(checked, columns=columns)


def read_safetensors(path: str | Path, remedy: str, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """A safetensors file's tensors on ``device``, verified (``reading``)."""
    with reading(path, remedy) as checked:
        return load_file(str(checked), device=str(device))


def stage_remedy(directory: str | Path, marker: str = FINISHED_MARKER, delete: Iterable[str | Path] = (),
                 outcome: str = "it writes its outputs again (a sampling run from the units it finished, which it "
                                "keeps)") -> str:
    """What to do about a corrupt output of the stage that wrote ``directory``: delete its marker (and
    the files ``delete``) and rerun it, which ``outcome``: a stage whose marker is gone writes every
    output again, and a resumable one keeps what it finished."""
    paths = [*map(str, delete), str(Path(directory) / marker)]
    return f"delete {', '.join(paths)} and rerun the command that wrote {directory}: {outcome}"


# ----------------------------------------------------------------------------- finished, identity


def is_finished(directory: str | Path, marker: str = FINISHED_MARKER) -> bool:
    """Whether ``directory`` holds a finished run: its marker, written last, exists."""
    return (Path(directory) / marker).exists()


def require_finished(directory: str | Path, what: str, hint: str, marker: str = FINISHED_MARKER) -> None:
    """Raise FileNotFoundError unless ``directory`` holds a finished ``what``; ``hint`` says what to run."""
    if not is_finished(directory, marker):
        raise FileNotFoundError(f"{directory} holds no finished {what} ({marker} is missing); {hint}")


def mark_finished(directory: str | Path, summary: dict, marker: str = FINISHED_MARKER) -> None:
    """Write the marker (``summary`` as JSON): call it after every other output is written. The
    directory's lock (``hold``) is let go: a finished directory is only read from now on."""
    write_json(Path(directory) / marker, summary)
    release(directory)


LOCK_FILE = ".lock"
"""In a directory a process writes: it holds an exclusive ``flock`` on it (``hold``)."""
_HELD: dict[Path, int] = {}
"""The directories this process holds, with the descriptor of each one's lock file."""


def hold(directory: str | Path) -> None:
    """Hold ``directory`` for this process, so that no other process writes it at the same time: an
    exclusive ``flock`` on ``<directory>/.lock``, which the kernel lets go when the process ends,
    killed or not (no stale lock survives its holder). Held until ``release`` or the process's end;
    holding it again is a no-op. A directory another process holds is a RunDirectoryError naming it."""
    directory = Path(directory).resolve()
    if directory in _HELD:
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirectoryError(f"{directory} is being written by {holder}; wait for it to finish or stop it, "
                                "or choose another output directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    _HELD[directory] = fd


def release(directory: str | Path) -> None:
    """Let go of a directory this process holds (nothing when it holds none)."""
    fd = _HELD.pop(Path(directory).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor ends its flock


def mark_unfinished(directory: str | Path, marker: str = FINISHED_MARKER) -> None:
    """Remove the marker (and its checksum) before a finished directory's outputs are rewritten,
    so that a crash part-way leaves a directory that does not look finished."""
    path = Path(directory) / marker
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def read_summary(directory: str | Path) -> dict:
    """The summary a finished directory's marker holds."""
    return read_json(Path(directory) / FINISHED_MARKER, stage_remedy(directory))


def claim(directory: str | Path, identity: dict, *, record: str, other: str,
          view: Callable[[dict], dict] | None = None, marker: str = FINISHED_MARKER, resumable: bool = True,
          known: Iterable[str] | None = None, write: bool = True,
          replaceable: Callable[[Path], str | None] | None = None,
          scratch: Iterable[str] = ()) -> Literal["fresh", "resume", "finished"]:
    """Claim ``directory`` for the run ``identity``: 'fresh', 'resume' or 'finished' (module docstring).

    Args:
        record: the file that holds the directory's identity (``view`` of its JSON, when it holds more).
        other: what the directory holds when the identities differ, completing "<directory> holds ...".
        marker: the directory's finished marker (``is_finished``).
        resumable: the record is written here, when the directory is claimed, and counts at once;
            False: the stage writes it with its outputs, and it counts only once the directory is
            finished ('resume' is never returned).
        known: the entries a fresh directory may already hold besides the record (config.yaml, logs,
            and for a stage that records its identity last, the outputs a killed run of it leaves;
            ``fnmatch`` patterns), with their checksums and temporaries; any other entry is refused,
            and so is a record that is not this stage's (its keys are not the identity's: a user's
            file of the same name). None: no check.
        write: False on the processes that must not write (DDP ranks other than 0): they check only.
        replaceable: for a resumable record, what the unfinished run in ``directory`` left, when it
            left nothing worth keeping (e.g. 'had finished no unit'), else None. A run with another
            identity then replaces it (a line says so): its ``scratch`` entries are deleted and the
            new record written, instead of refusing the directory. None: never replaced. On a
            process that does not write, such a directory counts as 'fresh' and is left as it is.
        scratch: the entries that hold a replaced run's partial work (deleted before the record is
            overwritten, so a process killed in between leaves a directory that is replaced again).

    Raises:
        RunDirectoryError: the record holds another identity (one that left work, or finished), or
            a fresh directory holds foreign entries.
    """
    directory = Path(directory)
    finished = is_finished(directory, marker)
    path = directory / record
    if path.exists() and (resumable or finished):
        recorded = read_json(path, f"{record} records which run {directory} holds; delete {directory} and rerun to "
                                   "start over")
        recorded = view(recorded) if view is not None else recorded
        if recorded == identity:
            if not finished and write:
                hold(directory)
            return "finished" if finished else "resume"
        differ = ", ".join(sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k)))
        left = replaceable(directory) if replaceable is not None and resumable and not finished else None
        if left is None:
            raise RunDirectoryError(f"{directory} holds {other} (differs in: {differ}); its work would be lost: "
                                    "choose a new output directory, or delete this one to start over")
        if not write:
            return "fresh"
        hold(directory)
        print(f"lit-susc: {directory} held an unfinished run with other settings (differs in: {differ}) that "
              f"{left}; replacing it", flush=True)
        _remove_entries(directory, scratch)
    if known is not None and directory.exists():
        allowed = [*known, *([record] if resumable or _holds_own_record(path, identity, view) else [])]
        foreign = sorted(p.name for p in directory.iterdir()
                         if p.name != LOCK_FILE and not _is_known_entry(p.name, allowed) and not _orphan_checksum(p))
        if foreign:
            raise RunDirectoryError(f"{directory} is not empty and holds no run of this stage "
                                    f"({', '.join(foreign[:5])}); choose a new output directory, or move "
                                    "those files away")
    # Checked first, so that a refused directory is left as it was. A stage that records its identity
    # last does not create its directory for the lock: its refusals leave nothing behind, and its
    # outputs are atomic and deterministic, so two such processes write the same files.
    if write and (resumable or directory.exists()):
        hold(directory)
    if resumable and write:
        write_json(path, identity)
    return "fresh"


_DERIVED = re.compile(rf"^(?P<name>.+?)(?:{re.escape(CHECKSUM_SUFFIX)})?(?:\.\d+\.tmp.*)?$")
"""A written file's name from its checksum's (``<name>.sha256``) or a temporary's
(``<name>.<pid>.tmp<suffix>``, of either)."""


def _is_known_entry(name: str, known: Iterable[str]) -> bool:
    base = _DERIVED.match(name)["name"]
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in known)


def _orphan_checksum(path: Path) -> bool:
    """Whether ``path`` is the checksum of a file that is gone (one a user deleted, e.g. a marker): it
    belongs to no run, and the next write of that file replaces it."""
    return path.name.endswith(CHECKSUM_SUFFIX) and not path.with_name(path.name[:-len(CHECKSUM_SUFFIX)]).exists()


def _holds_own_record(path: Path, identity: dict, view: Callable[[dict], dict] | None) -> bool:
    """Whether ``path``, the record of an unfinished directory whose stage records its identity last,
    is one this stage wrote (a run killed before its marker): JSON whose view has the identity's
    keys. A user's file of the same name is not."""
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text())
        recorded = view(recorded) if view is not None else recorded
    except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, or not shaped like a record
        return False
    return isinstance(recorded, dict) and set(recorded) == set(identity)


def _remove_entries(directory: Path, names: Iterable[str]) -> None:
    for name in names:
        entry = directory / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- shards


def shard_name(kind: str, index: int, suffix: str = ".safetensors") -> str:
    return f"{kind}/shard-{index:05d}{suffix}"


def write_shard(directory: Path, kind: str, index: int, values: Tensor, metadata: dict[str, str] | None = None) -> str:
    """Write shard ``index`` of ``kind`` (its columns, under the key ``kind``); returns its name in ``directory``."""
    name = shard_name(kind, index)
    write_safetensors(directory / name, {kind: values}, metadata)
    return name


def read_shards(directory: str | Path, shards: list[dict], key: str, start: int = 0, stop: int | None = None, *,
                rows: int, dtype: torch.dtype, file_key: str = "file", components: list[int] | None = None,
                remedy: Callable[[int], str] | None = None) -> Tensor:
    """Columns [start, stop) (stop None: to the end) of the tensor ``key`` sharded as ``shards`` describes,
    as [rows, stop - start], reading only the shards it overlaps (each verified: ``remedy(i)`` says what
    to do when shard i is corrupt; default ``stage_remedy``); ``components`` picks rows. ``rows`` and
    ``dtype`` shape the result when no shard overlaps."""
    directory = Path(directory)
    parts = []
    for i, shard in enumerate(shards):
        lo = max(start, shard["start"])
        hi = shard["stop"] if stop is None else min(stop, shard["stop"])
        if lo >= hi:
            continue
        if file_key not in shard:
            raise FileNotFoundError(f"{directory} holds no {key} (written by an older lit-susc); rerun the stage "
                                    "that wrote it")
        with (reading(directory / shard[file_key], remedy(i) if remedy else stage_remedy(directory)) as path,
              safe_open(str(path), framework="pt") as f):
            part = f.get_slice(key)[:, lo - shard["start"]:hi - shard["start"]]
        parts.append(part if components is None else part[components])
    return torch.cat(parts, dim=1) if parts else torch.zeros(rows, 0, dtype=dtype)


def read_token_table(directory: str | Path, shards: list[dict] | None = None,
                     remedy: Callable[[int], str] | None = None) -> pa.Table:
    """The token table of ``directory``: the Parquet ``shards`` in order when an index lists them, else
    ``tokens.parquet``; each verified (``remedy`` as for ``read_shards``)."""
    directory = Path(directory)
    if shards is not None:
        return pa.concat_tables([read_parquet(directory / s["file"], remedy(i) if remedy else stage_remedy(directory))
                                 for i, s in enumerate(shards)])
    if not (directory / TOKENS_FILE).exists():
        raise FileNotFoundError(f"{directory} has no token table ({TOKENS_FILE} or tokens/shard-*.parquet)")
    return read_parquet(directory / TOKENS_FILE, stage_remedy(directory))


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
