"""Per-unit state on disk and its reduction across ranks.

Each finished (component, chain) unit leaves small float64 tensors under its unit directory;
they are the resume state. At the end every rank loads the units it owns, and the sums are
reduced across ranks, so only accumulators ever cross processes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from .rundir import write_safetensors


def save_unit_tensors(directory: Path, name: str, tensors: dict[str, Tensor]) -> None:
    """Write ``name.safetensors`` (atomically, like every file: lit_susc.rundir)."""
    write_safetensors(directory / f"{name}.safetensors", tensors)


def load_unit_tensors(directory: Path, name: str, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    path = directory / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the unit is marked done but its {name} state is not there; "
                                "delete the unit's directory to recompute it")
    return load_file(str(path), device=str(device))


def reduce_sum(trainer, tensor: Tensor) -> Tensor:
    """Sum a tensor over ranks (a no-op on one process)."""
    if trainer is None or trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")
