"""Components: named subsets of a model's parameters that a chain is restricted to.

A component maps parameter names to ``None`` (the whole tensor) or a boolean mask of that
parameter's shape. Built-in components come from the model family's adapter (lit_susc.models:
one module per family documents its layout: GPT-NeoX, GPT-2, and Llama, Qwen2, Qwen3, Mistral,
OLMo 2, Phi-3 in the Llama layout); their names follow one scheme, ``layers.{l}.heads.{h}``,
``layers.{l}.kv.{g}`` (key/value groups of grouped-query attention), ``layers.{l}.mlp``, ``embed``,
``unembed`` (GPT-2 adds ``pos_embed``).
This module selects among them and checks explicit components against the model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .models import adapter_for

Component = dict[str, Tensor | None]
"""Parameter name -> None (whole tensor) or a bool mask of the parameter's shape."""


def discover_components(model: nn.Module) -> dict[str, Component]:
    """All built-in components of a transformers causal LM, in layer order (from its family's ModelAdapter)."""
    return adapter_for(model).components(model)


def select_components(available: Mapping[str, Component], patterns: Sequence[str]) -> dict[str, Component]:
    """Components whose names match any glob pattern (``layers.3.heads.*``, ``*.mlp``, ``embed``).

    Order follows ``available``. A pattern that matches nothing is an error listing what exists.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in available):
            raise ValueError(
                f"component pattern {pattern!r} matches no component; available: {summarize_names(list(available))}"
            )
    return {n: c for n, c in available.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def component_sizes(model: nn.Module, components: Mapping[str, Component]) -> dict[str, int]:
    """The number of weights each component moves: whole tensors' sizes plus the True entries of masks
    (shapes only, so a model on the meta device will do)."""
    params = dict(model.named_parameters())
    return {name: sum(params[p].numel() if mask is None else int(mask.sum()) for p, mask in component.items())
            for name, component in components.items()}


def summarize_names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def resolve_components(model: nn.Module, components) -> dict[str, Component]:
    """Turn the user's ``components`` argument into {name: Component} and check it against the model.

    ``None``: the whole model as one component ``all`` (every parameter that requires grad);
    a list of glob patterns: built-in discovery, then selection; a dict: explicit components.
    """
    params = dict(model.named_parameters())
    if components is None:
        resolved = {"all": {n: None for n, p in params.items() if p.requires_grad}}
    elif isinstance(components, (str, list, tuple)):
        resolved = select_components(discover_components(model), components)
    elif isinstance(components, Mapping):
        resolved = {str(k): dict(v) for k, v in components.items()}
    else:
        raise TypeError(f"components must be None, a list of glob patterns or a dict, got {type(components).__name__}")
    if not resolved:
        raise ValueError("no components selected")
    for cname, comp in resolved.items():
        if not comp:
            raise ValueError(f"component {cname!r} holds no parameters")
        for pname, mask in comp.items():
            if pname not in params:
                raise ValueError(f"component {cname!r} names parameter {pname!r}, which the model does not have; "
                                 f"parameters: {summarize_names(list(params))}")
            if mask is not None and (mask.dtype != torch.bool or mask.shape != params[pname].shape):
                raise ValueError(f"component {cname!r}: the mask of {pname!r} must be a bool tensor of shape "
                                 f"{tuple(params[pname].shape)}, got {mask.dtype} {tuple(mask.shape)}")
    return resolved

