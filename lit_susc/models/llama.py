"""Llama: ``LlamaForCausalLM``, model type ``llama``; the layout that Qwen2, Qwen3, Mistral, OLMo 2 and
Phi-3 share (their modules here subclass ``LlamaAdapter`` and say how they differ).

Layout (these modules are the only ones in lit-susc that name these parameters and modules):

    model.embed_tokens                              token embedding
    model.layers.{l}.input_layernorm                attention branch: self_attn(input_layernorm(h))
    model.layers.{l}.self_attn.{q,k,v,o}_proj       (biases where the config asks for them)
    model.layers.{l}.post_attention_layernorm       MLP branch: mlp(post_attention_layernorm(.))
    model.layers.{l}.mlp.{gate,up,down}_proj        down_proj(act(gate_proj(x)) * up_proj(x))
    model.norm                                      final norm
    lm_head                                         output head; absent from named_parameters when
                                                    tied to model.embed_tokens (tie_word_embeddings)

Grouped-query attention: H query heads of size d = ``config.head_dim`` (hidden_size / H when the
config has none) share K = ``num_key_value_heads`` key/value heads, r = H / K query heads each.
``q_proj`` rows [h*d, (h+1)*d) (weight and bias) are query head h, ``k_proj`` and ``v_proj`` rows
[g*d, (g+1)*d) are key/value head g, read by query heads g*r .. (g+1)*r - 1, and ``o_proj.weight``
columns [h*d, (h+1)*d) read head h's output; ``o_proj.bias`` belongs to no head.

Components, in this order within each layer l, then ``embed``, ``unembed``:

    layers.{l}.heads.{h}   q rows of head h and the o_proj columns reading it; when K == H, also
                           the k and v rows of head h (one key/value head per query head, as in
                           GPT-NeoX)
    layers.{l}.kv.{g}      only when K < H: the k and v rows of group g (weights and biases)
    layers.{l}.mlp         every parameter of the block's mlp
    embed                  model.embed_tokens; with tied embeddings also the unembedding, and then
                           there is no ``unembed`` (as for GPT-2)
    unembed                lm_head

Norm weights (the blocks' norms, q_norm / k_norm where a family has them, the final norm) belong
to no component. Masks are computed from shapes only, so discovery works on the meta device.

Prefix caching: the residual is sequential (h + attn(norm(h)), then + mlp(norm(.))). ``run_from``
runs the base model's own forward over a slice of its layers, so the rotary embeddings and the
attention masks are those of the full pass; models with per-layer attention types
(``config.layer_types``: Qwen2 and Qwen3 with sliding-window layers) get the slice of that list too,
since their forward reads the type of its i-th layer at position i.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from torch import Tensor, nn

from .base import Branch, BranchLayout, ModelAdapter, Place, slice_mask

if TYPE_CHECKING:
    from ..components import Component

Projection = Literal["q", "k", "v"]

_BLOCK_PARAM = re.compile(r"model\.layers\.(\d+)\.(\w+?)\.")
_BRANCH_OF_MODULE: dict[str, Branch] = {"self_attn": "attention", "mlp": "mlp"}


def head_dim(config) -> int:
    """The size d of one attention head: ``config.head_dim``, or hidden_size / num_attention_heads without one."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class LlamaAdapter(ModelAdapter):
    """The Llama layout: per-query-head, per-key/value-group, per-MLP, embedding and unembedding
    components, and prefix caching."""

    branches: Mapping[Branch, BranchLayout] = {
        "attention": BranchLayout(norm="input_layernorm", module="self_attn", returns_tuple=True),
        "mlp": BranchLayout(norm="post_attention_layernorm", module="mlp", returns_tuple=False),
    }
    """The block's branches: pre-norm, then module."""

    def projection_rows(self, model: nn.Module, projection: Projection, lo: int, hi: int) -> tuple[str, int, int]:
        """Rows [lo, hi) of ``projection``'s output as (module under self_attn, rows of that module).
        Separate q_proj, k_proj and v_proj here; a family with a fused projection overrides it."""
        return f"{projection}_proj", lo, hi

    def components(self, model: nn.Module) -> dict[str, Component]:
        cfg = model.config
        params = dict(model.named_parameters())
        n_heads = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        d = head_dim(cfg)
        per_group = n_heads // n_kv

        def rows(attn: str, spans: list[tuple[Projection, int]]) -> Component:
            """Masks of the rows of the given (projection, head) spans, weight and bias of each module."""
            ranges: dict[str, list[tuple[int, int]]] = {}
            for projection, head in spans:
                module, lo, hi = self.projection_rows(model, projection, head * d, (head + 1) * d)
                ranges.setdefault(module, []).append((lo, hi))
            return {f"{attn}.{module}.{kind}": slice_mask(params[f"{attn}.{module}.{kind}"].shape, spans_of_module)
                    for module, spans_of_module in ranges.items() for kind in ("weight", "bias")
                    if f"{attn}.{module}.{kind}" in params}

        out: dict[str, Component] = {}
        for layer in range(cfg.num_hidden_layers):
            attn = f"model.layers.{layer}.self_attn"
            o_proj = f"{attn}.o_proj.weight"
            for h in range(n_heads):
                spans: list[tuple[Projection, int]] = [("q", h)] + ([("k", h), ("v", h)] if per_group == 1 else [])
                out[f"layers.{layer}.heads.{h}"] = {
                    **rows(attn, spans), o_proj: slice_mask(params[o_proj].shape, [(h * d, (h + 1) * d)], dim=1)}
            if per_group > 1:
                for g in range(n_kv):
                    out[f"layers.{layer}.kv.{g}"] = rows(attn, [("k", g), ("v", g)])
            mlp = f"model.layers.{layer}.mlp."
            out[f"layers.{layer}.mlp"] = {n: None for n in params if n.startswith(mlp)}
        out["embed"] = {"model.embed_tokens.weight": None}
        if "lm_head.weight" in params:  # tied: named_parameters lists the shared tensor once, as the embedding
            out["unembed"] = {"lm_head.weight": None}
        return out

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.layers

    def locate(self, model: nn.Module, name: str) -> Place | None:
        match = _BLOCK_PARAM.match(name)
        if match:
            return Place(int(match.group(1)), _BRANCH_OF_MODULE.get(match.group(2)))
        if name.startswith("lm_head."):
            return Place(model.config.num_hidden_layers)
        return None  # the embedding, the final norm

    def parallel_residual(self, model: nn.Module) -> bool:
        return False

    def branch_layout(self, branch: Branch) -> BranchLayout:
        return self.branches[branch]

    def run_from(self, model: nn.Module, hidden: Tensor, start: int, stop: int | None = None) -> Tensor:
        base = model.base_model
        cfg = base.config  # what its forward reads
        blocks, layer_types = base.layers, getattr(cfg, "layer_types", None)
        base.layers = blocks[start:stop]  # the model's own forward, over these blocks only
        if layer_types is not None:
            cfg.layer_types = layer_types[start:stop]
        try:
            return base(inputs_embeds=hidden, use_cache=False).last_hidden_state
        finally:
            base.layers = blocks
            if layer_types is not None:
                cfg.layer_types = layer_types
