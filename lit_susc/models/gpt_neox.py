"""GPT-NeoX (Pythia): ``GPTNeoXForCausalLM``, model type ``gpt_neox``.

Layout (this module is the only one in lit-susc that names these parameters and modules):

    gpt_neox.embed_in                           token embedding
    gpt_neox.layers.{l}.input_layernorm         attention branch: attention(input_layernorm(h))
    gpt_neox.layers.{l}.attention
    gpt_neox.layers.{l}.post_attention_layernorm  MLP branch: mlp(post_attention_layernorm(.))
    gpt_neox.layers.{l}.mlp
    gpt_neox.final_layer_norm
    embed_out (lm_head in some checkpoints)     output head, not tied to the embedding

``attention.query_key_value`` is fused and interleaved per head: rows [h*3*hs, (h+1)*3*hs) of
weight and bias are (q_h, k_h, v_h). ``attention.dense.weight`` columns [h*hs, (h+1)*hs) read
head h; ``attention.dense.bias`` belongs to no head.

Components: ``layers.{l}.heads.{h}``, ``layers.{l}.mlp``, ``embed``, ``unembed``. Layer norms
and the attention output bias belong to no component.

A block's residual is parallel (Pythia: h + attn(ln1(h)) + mlp(ln2(h))) or, with
``use_parallel_residual=False``, sequential. The attention module returns (output, weights).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torch import Tensor, nn

from .base import Branch, BranchLayout, ModelAdapter, Place, slice_mask

if TYPE_CHECKING:
    from ..components import Component

_BLOCK_PARAM = re.compile(r"gpt_neox\.layers\.(\d+)\.(\w+?)\.")
_HEAD = ("lm_head.", "embed_out.")
_BRANCHES: dict[Branch, BranchLayout] = {
    "attention": BranchLayout(norm="input_layernorm", module="attention", returns_tuple=True),
    "mlp": BranchLayout(norm="post_attention_layernorm", module="mlp", returns_tuple=False),
}
_BRANCH_OF_MODULE = {layout.module: branch for branch, layout in _BRANCHES.items()}


class GPTNeoXAdapter(ModelAdapter):
    """GPT-NeoX: per-head, per-MLP, embedding and unembedding components, and prefix caching."""

    def components(self, model: nn.Module) -> dict[str, Component]:
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
                    f"{qkv}.weight": slice_mask(params[f"{qkv}.weight"].shape, rows),
                    dense: slice_mask(params[dense].shape, [(h * hs, (h + 1) * hs)], dim=1),
                }
                if f"{qkv}.bias" in params:
                    comp[f"{qkv}.bias"] = slice_mask(params[f"{qkv}.bias"].shape, rows)
                out[f"layers.{layer}.heads.{h}"] = comp
            mlp = f"{prefix}.{layer}.mlp."
            out[f"layers.{layer}.mlp"] = {n: None for n in params if n.startswith(mlp)}
        out["embed"] = {"gpt_neox.embed_in.weight": None}
        unembed = "lm_head.weight" if "lm_head.weight" in params else "embed_out.weight"
        if unembed in params:
            out["unembed"] = {unembed: None}
        return out

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.layers

    def locate(self, model: nn.Module, name: str) -> Place | None:
        match = _BLOCK_PARAM.match(name)
        if match:
            return Place(int(match.group(1)), _BRANCH_OF_MODULE.get(match.group(2)))
        if name.startswith(_HEAD):
            return Place(model.config.num_hidden_layers)
        return None  # the embedding, the final norm

    def parallel_residual(self, model: nn.Module) -> bool:
        return model.config.use_parallel_residual

    def branch_layout(self, branch: Branch) -> BranchLayout:
        return _BRANCHES[branch]

    def run_from(self, model: nn.Module, hidden: Tensor, start: int, stop: int | None = None) -> Tensor:
        base = model.base_model
        blocks = base.layers
        base.layers = blocks[start:stop]  # the model's own forward, over these blocks only
        try:
            return base(inputs_embeds=hidden, use_cache=False).last_hidden_state
        finally:
            base.layers = blocks
