"""The per-token loss of causal LMs against transformers' own loss."""

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from lit_susc.lm import per_token_loss


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return GPTNeoXForCausalLM(cfg).eval()


def test_mean_per_token_loss_is_the_models_own_loss(model):
    ids = torch.randint(0, 100, (3, 40))
    with torch.no_grad():
        losses = per_token_loss(model, ids)
        reference = model(input_ids=ids, labels=ids).loss
    assert losses.shape == (3, 39)
    torch.testing.assert_close(losses.mean(), reference, rtol=1e-6, atol=1e-6)


def test_chunking_the_head_does_not_change_the_losses(model):
    ids = torch.randint(0, 100, (3, 40))
    with torch.no_grad():
        torch.testing.assert_close(per_token_loss(model, ids, chunk_tokens=7), per_token_loss(model, ids, chunk_tokens=1000),
                                   rtol=1e-6, atol=1e-6)
