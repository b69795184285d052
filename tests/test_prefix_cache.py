"""Prefix-activation caching (lit_susc.prefix) changes nothing but the work done.

Oracles: the uncached forward pass (the hidden state and the losses are the same values, with and
without a constant branch in the first block), and a run without caching with the same seeds (chi
equal to 1e-6 relative) for heads and MLPs of blocks 0 and 1, the embedding and the unembedding;
a hook counting calls of block 0's MLP shows the cache was used.
"""

import pytest
import torch
from tiny_runs import assert_same_chi, chi_cached_and_plain

from lit_susc import SGLDConfig
from lit_susc.lm import per_token_loss
from lit_susc.prefix import CachedPrefix, Cut, PrefixCache, component_cut, trunk_hidden
from lit_susc.tinylm import load_causal_lm

COMPONENTS = ["layers.0.heads.1", "layers.0.mlp", "layers.1.heads.0", "layers.1.mlp", "embed", "unembed"]


@pytest.fixture(scope="module")
def model(tiny_lm_dir):
    model, _ = load_causal_lm(str(tiny_lm_dir))
    return model.eval()


def _ids(seed, batch=4, length=16):
    return torch.randint(0, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cut", [Cut(1), Cut(2), Cut(0, "mlp"), Cut(0, "attention"), Cut(1, "mlp"), Cut(1, "attention")])
def test_the_suffix_from_a_cached_prefix_gives_the_full_forward_pass(model, cut):
    ids = _ids(0)
    cache = PrefixCache(model, 1 << 30, {"observation": [ids.numel()]})
    cache.plan()
    cache.cut = cut
    with torch.no_grad():
        cached = cache.view("observation", 0, ids)
        assert isinstance(cached, CachedPrefix) and (cached.start, cached.constant) == (cut.start, cut.constant)
        assert (cached.branch is None) == (cut.constant is None)
        assert torch.equal(trunk_hidden(model, cached), model.base_model(input_ids=ids).last_hidden_state)
        assert torch.equal(per_token_loss(model, cached), per_token_loss(model, ids))


def test_each_component_starts_at_its_first_block_with_the_branch_it_leaves_alone(model):
    from lit_susc.components import resolve_components

    comps = resolve_components(model, ["*"])
    n_layers = model.config.num_hidden_layers
    assert model.config.use_parallel_residual
    assert component_cut(model, comps["layers.1.heads.0"]) == Cut(1, "mlp")
    assert component_cut(model, comps["layers.1.mlp"]) == Cut(1, "attention")
    assert component_cut(model, comps["layers.0.heads.0"]) == Cut(0, "mlp")
    assert component_cut(model, comps["unembed"]) == Cut(n_layers)
    assert component_cut(model, comps["embed"]) is None


def test_a_sequential_residual_keeps_only_the_attention_branch_constant():
    """h' = a + mlp(ln2(a)) with a = h + attn(ln1(h)): an MLP leaves attn alone; a head changes a, so the MLP."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from lit_susc.components import resolve_components

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=16,
                                             use_parallel_residual=False)).eval()
    comps = resolve_components(model, ["*"])
    assert component_cut(model, comps["layers.1.heads.2"]) == Cut(1)
    assert component_cut(model, comps["layers.0.heads.2"]) is None
    assert component_cut(model, comps["layers.1.mlp"]) == Cut(1, "attention")
    ids = _ids(0)
    cache = PrefixCache(model, 1 << 30, {"observation": [ids.numel()]})
    cache.plan()
    cache.begin(comps["layers.1.mlp"])
    with torch.no_grad():
        assert torch.equal(per_token_loss(model, cache.view("observation", 0, ids)), per_token_loss(model, ids))


def test_the_budget_keeps_observation_batches_first(model):
    width = 2 * model.config.hidden_size * 4  # the block's input and a branch's output, float32
    cache = PrefixCache(model, 3 * 64 * width, {"observation": [64, 64], "reference": [64], "sampling": [64, 64]})
    assert "observation 2/2 batches, reference 1/1 batches, sampling 0/2 batches" in cache.plan()
    assert cache.plan_bytes == 3 * 64 * width


def test_chi_with_caching_equals_chi_without(model):
    (cached, cached_calls), (plain, plain_calls) = chi_cached_and_plain(
        model, model.base_model.layers[0].mlp, [_ids(1), _ids(2), _ids(3)], [_ids(4), _ids(5)], COMPONENTS,
        SGLDConfig(lr=1e-4, nbeta=30.0, localization=300.0, chains=2, draws=4, burn_in=2, seed=7))
    assert_same_chi(cached, plain, COMPONENTS)
    # 4 of the 6 components skip block 0's MLP once their batches are cached
    assert cached_calls < 0.5 * plain_calls, (cached_calls, plain_calls)
