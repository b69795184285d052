"""GPT-2: ``GPT2LMHeadModel``, model type ``gpt2``.

Layout (this module is the only one in lit-susc that names these parameters and modules):

    transformer.wte                 token embedding, tied with the output head (lm_head)
    transformer.wpe                 position embedding
    transformer.h.{l}.ln_1, .attn   attention branch
    transformer.h.{l}.ln_2, .mlp    MLP branch (sequential residual)
    transformer.ln_f                final norm

``attn.c_attn`` is a Conv1D with weight (d, 3d) whose columns are [Q | K | V], head h at
[h*hs, (h+1)*hs) inside each block; ``attn.c_proj.weight`` rows [h*hs, (h+1)*hs) read head h
(Conv1D weights are (in, out)); ``attn.c_proj.bias`` belongs to no head.

Components: ``layers.{l}.heads.{h}``, ``layers.{l}.mlp``, ``embed`` (tied, so it is also the
unembedding: there is no ``unembed``) and ``pos_embed``. Layer norms and the attention output
bias belong to no component.

No prefix caching (``locate`` keeps the default, so every chain runs the full model): GPT2Model's
forward adds the position embeddings to ``inputs_embeds``, so it cannot be rerun from a block on a
stored hidden state the way GPT-NeoX's is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .base import ModelAdapter, slice_mask

if TYPE_CHECKING:
    from ..components import Component


class GPT2Adapter(ModelAdapter):
    """GPT-2: per-head, per-MLP, (tied) embedding and position-embedding components; no prefix caching."""

    def components(self, model: nn.Module) -> dict[str, Component]:
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
                    f"{attn}.c_attn.weight": slice_mask(params[f"{attn}.c_attn.weight"].shape, cols, dim=1),
                    f"{attn}.c_attn.bias": slice_mask(params[f"{attn}.c_attn.bias"].shape, cols),
                    f"{attn}.c_proj.weight": slice_mask(params[f"{attn}.c_proj.weight"].shape,
                                                        [(h * hs, (h + 1) * hs)]),
                }
            mlp = f"transformer.h.{layer}.mlp."
            out[f"layers.{layer}.mlp"] = {n: None for n in params if n.startswith(mlp)}
        out["embed"] = {"transformer.wte.weight": None}  # tied with lm_head: also the unembedding
        out["pos_embed"] = {"transformer.wpe.weight": None}
        return out

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.h
