"""Per-unit state on disk and its reduction across ranks.

Each finished (component, chain) unit leaves small float64 tensors and its trace table under its
unit directory (``<run>/state/units/<unit>``); they are the resume state. At the end every rank
loads the units it owns, and the sums are reduced across ranks, so only accumulators ever cross
processes. Every file is checked against its checksum when it is loaded (lit_susc.rundir); a
corrupt or missing one is refused with ``unit_remedy``, which recomputes that unit alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import torch
from torch import Tensor

from .rundir import read_parquet, read_safetensors, write_parquet, write_safetensors


def unit_remedy(directory: Path) -> str:
    """What to do about a unit whose state is corrupt or missing: delete the unit's directory and
    rerun, which samples that unit again and reuses every other one.

    Under targeted sampling (``sgld.target_reliability``) a decided round is not sampled again, so
    the decisions of the unit's round and of later rounds (``<run>/state/rounds/round-RRR.json``)
    go too; the rerun decides them again from the same units.
    """
    state = directory.parent.parent  # <run>/state, above units/<unit> (sampler.unit_dir)
    match = re.search(r"-round(\d+)$", directory.name)  # a later round's unit (schedule.Unit.key)
    first = int(match.group(1)) if match else 0
    decided = sorted(p for p in (state / "rounds").glob("round-*.json") if int(p.stem[len("round-"):]) >= first)
    return (f"delete {', '.join(map(str, [directory, *decided]))} and rerun the same command: only that unit is "
            "sampled again (with the chains batched with it, compute.batch_chains)")


def save_unit_tensors(directory: Path, name: str, tensors: dict[str, Tensor]) -> None:
    """Write ``name.safetensors`` (atomically and with its checksum, like every file: lit_susc.rundir)."""
    write_safetensors(directory / f"{name}.safetensors", tensors)


def load_unit_tensors(directory: Path, name: str, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The tensors ``save_unit_tensors`` wrote, verified, on ``device``."""
    return read_safetensors(_existing(directory, f"{name}.safetensors"), unit_remedy(directory), device)


def save_unit_table(directory: Path, name: str, table: pa.Table) -> None:
    """Write ``name.parquet`` (atomically and with its checksum)."""
    write_parquet(directory / f"{name}.parquet", table)


def load_unit_table(directory: Path, name: str) -> pa.Table:
    """The table ``save_unit_table`` wrote, verified."""
    return read_parquet(_existing(directory, f"{name}.parquet"), unit_remedy(directory))


def _existing(directory: Path, file: str) -> Path:
    path = directory / file
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the unit is marked done but this part of its state is not "
                                f"there; {unit_remedy(directory)}")
    return path


def reduce_sum(trainer, tensor: Tensor) -> Tensor:
    """Sum a tensor over ranks (a no-op on one process)."""
    if trainer is None or trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")
