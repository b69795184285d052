"""Residual features: which layers, what they equal, where the forward pass stops, what is refused."""

import pyarrow as pa
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from lit_susc.aux.features import (
    ResidualFeatures,
    check_alignment,
    check_same_model,
    config_hash,
    feature_layers,
    model_identity,
)


def neox(layers=4):
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers,
                                            num_attention_heads=2, intermediate_size=32,
                                            max_position_embeddings=16)).eval()


def gpt2(layers=3):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=layers, n_head=2, n_positions=16)).eval()


def test_default_layers_are_four_evenly_spaced_intermediate_ones():
    assert feature_layers(24) == [5, 10, 14, 19]  # Pythia-1.4B: i * 24/5 rounded
    assert feature_layers(12) == [2, 5, 7, 10]
    assert feature_layers(4) == [1, 2, 3, 4]  # too few blocks for 4 intermediate ones: every block output
    assert feature_layers(2) == [1, 2]


@pytest.mark.parametrize("build", [neox, gpt2])
def test_features_equal_output_hidden_states_at_the_layers_asked(build):
    """Oracle: transformers' own output_hidden_states (index l = output of block l-1)."""
    model = build()
    ids = torch.randint(0, 64, (3, 12))
    layers = [0, 1, 2]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
        features = ResidualFeatures(model, layers)(ids)
    assert features.shape == (3, 12, 3 * 16)
    assert torch.allclose(features, torch.cat([hidden[l] for l in layers], dim=-1), atol=1e-6)


def test_the_last_block_feature_is_taken_before_the_final_norm():
    """Oracle: output_hidden_states' last entry is the final norm applied to our last-block feature."""
    model = neox(2)
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        final = model(ids, output_hidden_states=True).hidden_states[-1]
        last_block = ResidualFeatures(model, [2])(ids)
        assert torch.allclose(model.gpt_neox.final_layer_norm(last_block), final, atol=1e-6)
        assert not torch.allclose(last_block, final, atol=1e-3)


def test_the_forward_pass_stops_after_the_deepest_layer():
    model = neox(4)
    ran = []
    for i, block in enumerate(model.gpt_neox.layers):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    model.gpt_neox.final_layer_norm.register_forward_hook(lambda *_: ran.append("final_norm"))
    with torch.no_grad():
        ResidualFeatures(model, [2, 1])(torch.randint(0, 64, (2, 8)))
    assert ran == [0, 1]


def test_layers_out_of_range_or_repeated_are_refused():
    with pytest.raises(ValueError, match=r"indices in 0\.\.4"):
        ResidualFeatures(neox(4), [1, 5])
    with pytest.raises(ValueError, match="must not repeat"):
        ResidualFeatures(neox(4), [1, 1])


def table(document, position, token_id):
    return pa.table({"document": document, "position": position, "token_id": token_id})


def test_alignment_mismatch_names_the_token_and_column():
    expected = table(["a", "a", "b"], [1, 2, 1], [5, 6, 7])
    check_alignment(expected, table(["a", "a", "b"], [1, 2, 1], [5, 6, 7]), "features")
    with pytest.raises(ValueError, match="token 2 has token_id=9"):
        check_alignment(expected, table(["a", "a", "b"], [1, 2, 1], [5, 6, 9]), "features")
    with pytest.raises(ValueError, match="2 tokens, but the susceptibility run has 3"):
        check_alignment(expected, table(["a", "a"], [1, 2], [5, 6]), "features")


def test_config_hash_ignores_the_library_version_but_not_the_architecture():
    config = neox().config.to_diff_dict()
    assert config_hash({**config, "transformers_version": "0.0"}) == config_hash(config)
    assert config_hash({**config, "num_hidden_layers": 5}) != config_hash(config)


def test_a_different_base_model_is_refused_and_a_renamed_copy_accepted():
    model = neox()
    recorded = model_identity("org/model", "step1", model)
    check_same_model(recorded, model_identity("/local/copy", None, model), "predict")
    with pytest.raises(ValueError, match="differ in weights"):
        check_same_model(recorded, model_identity("org/model", "step1", neox().apply(_perturb)), "predict")
    with pytest.raises(ValueError, match="differ in config_hash"):
        check_same_model(recorded, model_identity("org/model", "step1", neox(3)), "predict")


def _perturb(module):
    if isinstance(module, torch.nn.Linear):
        module.weight.data += 1.0
