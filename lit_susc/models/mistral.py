"""Mistral: ``MistralForCausalLM``, model type ``mistral``. The Llama layout (lit_susc.models.llama), with
an optional sliding window (``config.sliding_window``) that is the same for every layer, so the
attention mask of a run from any block is the full pass's.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class MistralAdapter(LlamaAdapter):
    """Mistral: the Llama adapter unchanged."""
