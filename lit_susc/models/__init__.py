"""Model adapters, by ``config.model_type``: everything lit-susc knows about model families.

Built in: GPT-NeoX (``gpt_neox``, Pythia; lit_susc.models.gpt_neox) and GPT-2 (``gpt2``;
lit_susc.models.gpt2). A new family is one module with a ``ModelAdapter`` subclass
(lit_susc.models.base) and one ``register_adapter`` line, below or in user code before the run.
"""

from __future__ import annotations

from torch import nn

from .base import Branch, BranchLayout, ModelAdapter, Place, slice_mask
from .capture import Capture, StopForward
from .gpt2 import GPT2Adapter
from .gpt_neox import GPTNeoXAdapter

__all__ = [
    "ADAPTERS", "Branch", "BranchLayout", "Capture", "GPT2Adapter", "GPTNeoXAdapter", "ModelAdapter", "Place",
    "StopForward", "adapter_for", "register_adapter", "slice_mask",
]

ADAPTERS: dict[str, ModelAdapter] = {}
"""config.model_type -> the adapter of that family."""

_GENERIC = ModelAdapter()


def register_adapter(model_type: str, adapter: ModelAdapter) -> None:
    """Use ``adapter`` for every model whose ``config.model_type`` is ``model_type`` (replacing any before)."""
    ADAPTERS[model_type] = adapter


def adapter_for(model: nn.Module, strict: bool = True) -> ModelAdapter:
    """The adapter registered for ``model``'s ``config.model_type``.

    An unregistered type is a ValueError, or with ``strict=False`` gets the base ``ModelAdapter``:
    blocks found by shape, nothing cached, no built-in components.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    if not strict:
        return _GENERIC
    raise ValueError(
        f"no built-in component discovery for model type {model_type!r} "
        f"(known: {sorted(ADAPTERS)}); pass components explicitly as "
        "{name: {parameter name: None or bool mask}}, or register a ModelAdapter for the type "
        "(lit_susc.models.register_adapter)"
    )


register_adapter("gpt_neox", GPTNeoXAdapter())
register_adapter("gpt2", GPT2Adapter())
