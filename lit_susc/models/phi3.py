"""Phi-3: ``Phi3ForCausalLM``, model type ``phi3``. The Llama layout (lit_susc.models.llama), with

- one fused ``self_attn.qkv_proj`` (no bias) whose rows are [Q | K | V]: query head h at rows
  [h*d, (h+1)*d), key head g at H*d + [g*d, (g+1)*d), value head g at (H + K)*d + [g*d, (g+1)*d)
  (H query heads, K key/value heads of size d), so a head's or group's mask selects its rows of
  the fused weight;
- one fused ``mlp.gate_up_proj`` (rows [gate | up]) and ``mlp.down_proj``, all of ``layers.{l}.mlp``;
- dropout on each branch's output before the residual sum (identity in eval mode; applied to the
  cached constant branch as to the live one).
"""

from __future__ import annotations

from torch import nn

from .llama import LlamaAdapter, Projection, head_dim


class Phi3Adapter(LlamaAdapter):
    """Phi-3: the Llama adapter with the q, k and v rows found inside the fused qkv_proj."""

    def projection_rows(self, model: nn.Module, projection: Projection, lo: int, hi: int) -> tuple[str, int, int]:
        cfg = model.config
        d = head_dim(cfg)
        offset = {"q": 0, "k": cfg.num_attention_heads * d,
                  "v": (cfg.num_attention_heads + cfg.num_key_value_heads) * d}[projection]
        return "qkv_proj", offset + lo, offset + hi
