"""Components: named subsets of a model's parameters that a chain is restricted to.

A component maps parameter names to ``None`` (the whole tensor) or a boolean mask of that
parameter's shape. Discovery knows two transformers layouts (design.md section 3):

- GPT-NeoX (Pythia): ``attention.query_key_value`` is fused and interleaved per head, rows
  [h*3*hs, (h+1)*3*hs) of weight and bias are (q_h, k_h, v_h); ``attention.dense.weight``
  columns [h*hs, (h+1)*hs) read head h; ``attention.dense.bias`` belongs to no head.
- GPT-2: ``attn.c_attn`` is a Conv1D with weight (d, 3d) whose columns are [Q | K | V], head h
  at [h*hs, (h+1)*hs) inside each block; ``attn.c_proj.weight`` rows [h*hs, (h+1)*hs).
  Embedding and unembedding are tied: one component.

Names: ``layers.{l}.heads.{h}``, ``layers.{l}.mlp``, ``embed``, ``unembed`` (GPT-2 adds
``pos_embed``). Layer norms and output biases of attention belong to no component.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

Component = dict[str, Tensor | None]
"""Parameter name -> None (whole tensor) or a bool mask of the parameter's shape."""


def _rows(shape: tuple[int, ...], ranges: Sequence[tuple[int, int]], dim: int = 0) -> Tensor:
    """A bool mask selecting ``ranges`` along ``dim``: a stride-0 view, so it costs one vector."""
    line = torch.zeros(shape[dim], dtype=torch.bool)
    for lo, hi in ranges:
        line[lo:hi] = True
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return line.view(view).expand(shape)


def gpt_neox_components(model: nn.Module) -> dict[str, Component]:
    """Per-head, per-MLP, embedding and unembedding components of a GPTNeoXForCausalLM."""
    cfg = model.config
    params = dict(model.named_parameters())
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    hs = cfg.hidden_size // n_heads
    prefix = "gpt_neox.layers"
    out: dict[str, Component] = {}
    for layer in range(n_layers):
        qkv = f"{prefix}.{layer}.attention.query_key_value"
        dense = f"{prefix}.{layer}.attention.dense.weight"
        for h in range(n_heads):
            rows = [(h * 3 * hs, (h + 1) * 3 * hs)]
            comp: Component = {
                f"{qkv}.weight": _rows(params[f"{qkv}.weight"].shape, rows),
                dense: _rows(params[dense].shape, [(h * hs, (h + 1) * hs)], dim=1),
            }
            if f"{qkv}.bias" in params:
                comp[f"{qkv}.bias"] = _rows(params[f"{qkv}.bias"].shape, rows)
            out[f"layers.{layer}.heads.{h}"] = comp
        mlp = f"{prefix}.{layer}.mlp."
        out[f"layers.{layer}.mlp"] = {n: None for n in params if n.startswith(mlp)}
    out["embed"] = {"gpt_neox.embed_in.weight": None}
    unembed = "lm_head.weight" if "lm_head.weight" in params else "embed_out.weight"
    if unembed in params:
        out["unembed"] = {unembed: None}
    return out


def gpt2_components(model: nn.Module) -> dict[str, Component]:
    """Per-head, per-MLP, (tied) embedding and position-embedding components of GPT2LMHeadModel."""
    cfg = model.config
    params = dict(model.named_parameters())
    d, n_heads = cfg.n_embd, cfg.n_head
    hs = d // n_heads
    out: dict[str, Component] = {}
    for layer in range(cfg.n_layer):
        attn = f"transformer.h.{layer}.attn"
        for h in range(n_heads):
            cols = [(block * d + h * hs, block * d + (h + 1) * hs) for block in range(3)]
            out[f"layers.{layer}.heads.{h}"] = {
                f"{attn}.c_attn.weight": _rows(params[f"{attn}.c_attn.weight"].shape, cols, dim=1),
                f"{attn}.c_attn.bias": _rows(params[f"{attn}.c_attn.bias"].shape, cols),
                f"{attn}.c_proj.weight": _rows(params[f"{attn}.c_proj.weight"].shape, [(h * hs, (h + 1) * hs)]),
            }
        mlp = f"transformer.h.{layer}.mlp."
        out[f"layers.{layer}.mlp"] = {n: None for n in params if n.startswith(mlp)}
    out["embed"] = {"transformer.wte.weight": None}  # tied with lm_head: also the unembedding
    out["pos_embed"] = {"transformer.wpe.weight": None}
    return out


DISCOVERY = {"gpt_neox": gpt_neox_components, "gpt2": gpt2_components}


def discover_components(model: nn.Module) -> dict[str, Component]:
    """All built-in components of a transformers causal LM, in layer order."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DISCOVERY:
        raise ValueError(
            f"no built-in component discovery for model type {model_type!r} "
            f"(known: {sorted(DISCOVERY)}); pass components explicitly as "
            "{name: {parameter name: None or bool mask}}"
        )
    return DISCOVERY[model_type](model)


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


def component_size(component: Component, model: nn.Module) -> int:
    """Number of parameter entries the component moves."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() if m is None else int(m.sum()) for n, m in component.items())
