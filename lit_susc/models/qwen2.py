"""Qwen2 (Qwen2.5): ``Qwen2ForCausalLM``, model type ``qwen2``. The Llama layout (lit_susc.models.llama), with

- biases on ``q_proj``, ``k_proj`` and ``v_proj`` (none on ``o_proj``): each bias goes with its rows,
  to the head or key/value group that owns them;
- tied embeddings in the small models (Qwen2.5-0.5B, 1.5B, 3B): one component ``embed``;
- optional sliding-window attention on layers ``max_window_layers`` on (``config.layer_types``), which
  ``LlamaAdapter.run_from`` slices along with the layers.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    """Qwen2: the Llama adapter unchanged; the biases and per-layer attention types need nothing more."""
