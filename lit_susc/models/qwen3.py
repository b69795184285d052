"""Qwen3: ``Qwen3ForCausalLM``, model type ``qwen3``. The Llama layout (lit_susc.models.llama), with

- ``self_attn.q_norm`` and ``self_attn.k_norm``: RMS norms of each head's query and key (weights of
  size head_dim, shared by all heads of the layer), which belong to no component;
- ``head_dim`` set in the config and not hidden_size / num_attention_heads (128 in every Qwen3);
- per-layer attention types (``config.layer_types``) as in Qwen2.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    """Qwen3: the Llama adapter unchanged (the per-head q/k norms stay per head: heads remain separable)."""
