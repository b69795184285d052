"""Batched chains (compute.batch_chains): several chains of a component stepped as one vmapped
forward/backward give the results of running them one at a time with the same seeds.

Equal up to float32 rounding: a batched matmul may sum in another order than the lone chain's,
so losses differ in the last bits (about 1e-7 relative), which the chains carry along.
"""

import pytest
import torch
from torch import nn

from lit_susc import ComputeConfig, SGLDConfig, estimate_susceptibilities
from lit_susc.lm import per_token_loss
from lit_susc.tinylm import load_causal_lm


def _close(batched, alone, rel=1e-6):
    for i in range(len(alone)):
        scale = alone[i].abs().max()
        assert scale > 0
        assert (batched[i] - alone[i]).abs().max() <= rel * scale, i


def _mlp_run(batch_chains, sampler="sgld", sampling=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32)
    sampling = sampling or [(x[:16], y[:16]), (x[16:], y[16:])]
    return estimate_susceptibilities(
        model, lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, sampling, [(x, y)],
        components={"first": {"0.weight": None, "0.bias": None}, "last": {"2.weight": None}},
        sgld=SGLDConfig(lr=1e-3, nbeta=10.0, chains=3, draws=5, burn_in=2, sampler=sampler, seed=4),
        compute=ComputeConfig(batch_chains=batch_chains), trainer={"accelerator": "cpu", "enable_progress_bar": False})


@pytest.mark.parametrize("sampler", ["sgld", "rmsprop_sgld"])
def test_batched_chains_equal_chains_run_alone(sampler):
    alone, batched = _mlp_run(1, sampler), _mlp_run(3, sampler)
    _close(batched.chi, alone.chi)
    # The LLC, nbeta * (E[L] - L(w*)), is a small difference of losses of size ~1: float32 rounding of the
    # losses (~1e-7) times nbeta = 10 bounds its absolute error.
    for name in alone.llc:
        assert batched.llc[name]["per_chain"] == pytest.approx(alone.llc[name]["per_chain"], rel=1e-5, abs=1e-6)


def test_uneven_groups_of_chains_equal_chains_run_alone():
    _close(_mlp_run(2).chi, _mlp_run(1).chi)  # groups of 2 and 1 chains


def test_minibatches_of_different_shapes_cannot_be_stacked():
    x, y = torch.randn(20, 4), torch.randn(20)
    with pytest.raises(ValueError, match="batch_chains"):
        _mlp_run(3, sampling=[(x[:16], y[:16]), (x[16:], y[16:])])


def test_batched_chains_of_a_language_model_with_prefix_caching(tiny_lm_dir):
    model, _ = load_causal_lm(str(tiny_lm_dir))
    ids = lambda seed: torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(seed))

    def chi(batch_chains):
        return estimate_susceptibilities(
            model.eval(), per_token_loss, [ids(1), ids(2), ids(3)], [ids(4), ids(5)],
            components=["layers.1.heads.0", "layers.1.mlp", "embed", "unembed"],
            sgld=SGLDConfig(lr=1e-4, nbeta=30.0, chains=3, draws=4, burn_in=2, seed=7),
            compute=ComputeConfig(batch_chains=batch_chains),
            trainer={"accelerator": "cpu", "enable_progress_bar": False}).chi

    _close(chi(3), chi(1))


@pytest.mark.parametrize("tied", [False, True])
def test_batched_chains_of_an_embedding_with_a_padding_row(tied):
    """An embedding with padding_idx gets no gradient into its padding row from the lookup (a tied
    head still gives it one). Under vmap torch's embedding backward keeps that rule for the first
    chain of a batch only; oracle: the chains run alone, with ids that include the padding token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=48, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=32, max_position_embeddings=16,
                                         pad_token_id=0, tie_word_embeddings=tied)).eval()
    assert model.get_input_embeddings().padding_idx == 0
    ids = lambda seed: torch.randint(0, 4, (4, 12), generator=torch.Generator().manual_seed(seed))  # pad-heavy

    def chi(batch_chains):
        return estimate_susceptibilities(
            model, per_token_loss, [ids(1), ids(2)], [ids(3)], components=["embed"],
            sgld=SGLDConfig(lr=1e-3, nbeta=30.0, chains=3, draws=4, burn_in=2, seed=7),
            compute=ComputeConfig(batch_chains=batch_chains),
            trainer={"accelerator": "cpu", "enable_progress_bar": False}).chi

    _close(chi(3), chi(1))
    assert model.get_input_embeddings().padding_idx == 0  # restored after the batched passes
