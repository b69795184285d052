"""OLMo 2: ``Olmo2ForCausalLM``, model type ``olmo2``. The Llama layout (lit_susc.models.llama), with

- the norms on the branch outputs, not their inputs (no ``input_layernorm``):

      a  = h + post_attention_layernorm(self_attn(h))
      h' = a + post_feedforward_layernorm(mlp(a))

  so a cached constant branch is the module's output, and its post-norm still runs on it in the
  suffix (``BranchLayout.norm`` None);
- ``self_attn.q_norm`` / ``k_norm``: RMS norms over all heads' queries (keys) together (weights of
  size num_heads * head_dim), which belong to no component. Because the norm's scale is shared,
  moving one head's q rows rescales every head's queries: a head component's own parameters are
  still separate, but its effect on the other heads' outputs is not zero as in Llama;
- untied embeddings (``embed`` and ``unembed``).
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import Branch, BranchLayout
from .llama import LlamaAdapter


class Olmo2Adapter(LlamaAdapter):
    """OLMo 2: the Llama adapter with post-normed branches."""

    branches: Mapping[Branch, BranchLayout] = {
        "attention": BranchLayout(norm=None, module="self_attn", returns_tuple=True),
        "mlp": BranchLayout(norm=None, module="mlp", returns_tuple=False),
    }
