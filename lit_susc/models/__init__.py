"""Model adapters, by ``config.model_type``: everything lit-susc knows about model families.

Built in: GPT-NeoX (``gpt_neox``, Pythia; lit_susc.models.gpt_neox), GPT-2 (``gpt2``;
lit_susc.models.gpt2), and the grouped-query-attention families of the Llama layout
(lit_susc.models.llama): Llama (``llama``), Qwen2 (``qwen2``), Qwen3 (``qwen3``), Mistral
(``mistral``), OLMo 2 (``olmo2``) and Phi-3 (``phi3``), one module each. A new family is one module
with a ``ModelAdapter`` subclass (lit_susc.models.base) and one ``register_adapter`` line, below or
in user code before the run.
"""

from __future__ import annotations

from torch import nn

from .base import Branch, BranchLayout, ModelAdapter, Place, slice_mask
from .capture import Capture, StopForward
from .gpt2 import GPT2Adapter
from .gpt_neox import GPTNeoXAdapter
from .llama import LlamaAdapter
from .mistral import MistralAdapter
from .olmo2 import Olmo2Adapter
from .phi3 import Phi3Adapter
from .qwen2 import Qwen2Adapter
from .qwen3 import Qwen3Adapter

__all__ = [
    "ADAPTERS", "Branch", "BranchLayout", "Capture", "GPT2Adapter", "GPTNeoXAdapter", "LlamaAdapter", "MistralAdapter",
    "ModelAdapter", "Olmo2Adapter", "Phi3Adapter", "Place", "Qwen2Adapter", "Qwen3Adapter", "StopForward", "adapter_for",
    "register_adapter", "slice_mask",
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
register_adapter("llama", LlamaAdapter())
register_adapter("qwen2", Qwen2Adapter())
register_adapter("qwen3", Qwen3Adapter())
register_adapter("mistral", MistralAdapter())
register_adapter("olmo2", Olmo2Adapter())
register_adapter("phi3", Phi3Adapter())
