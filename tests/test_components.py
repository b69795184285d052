"""Component discovery and selection on transformers configs (no download)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from lit_susc.components import discover_components, resolve_components, select_components


def tiny_neox():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    return GPTNeoXForCausalLM(cfg).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
                     eos_token_id=0, attn_implementation="eager")
    return GPT2LMHeadModel(cfg).eval()


def test_pythia_1_4b_config_has_the_spec_410_components():
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=8192, max_position_embeddings=2048)
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(cfg)
    comps = discover_components(model)
    assert len(comps) == 24 * 16 + 24 + 2 == 410
    assert len(select_components(comps, ["layers.*.heads.*"])) == 384
    assert list(comps)[-2:] == ["embed", "unembed"]


def test_gpt2_ties_embedding_and_unembedding_into_one_component():
    comps = discover_components(tiny_gpt2())
    assert len(comps) == 2 * 4 + 2 + 2  # heads, MLPs, embed (tied), pos_embed
    assert "unembed" not in comps and comps["embed"] == {"transformer.wte.weight": None}


def _head_outputs(model, proj_name, inputs):
    """The input of each layer's attention output projection: heads' outputs side by side."""
    captured = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: captured.__setitem__(name, args[0].detach()))
             for name, m in model.named_modules() if name.endswith(proj_name)]
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()
    return captured


@pytest.mark.parametrize("make,proj,in_proj", [(tiny_neox, "attention.dense", "query_key_value"),
                                               (tiny_gpt2, "attn.c_proj", "c_attn")])
def test_perturbing_a_head_changes_only_that_head(make, proj, in_proj):
    """Oracle: noise on head h's q/k/v entries changes only slice h of the heads' outputs."""
    model = make()
    comps = discover_components(model)
    ids = torch.randint(0, 64, (2, 16))
    base = _head_outputs(model, proj, ids)
    params = dict(model.named_parameters())
    layer, head, hs = 1, 2, 8
    comp = comps[f"layers.{layer}.heads.{head}"]
    with torch.no_grad():
        for name, mask in comp.items():
            if in_proj in name:
                params[name].add_(torch.randn_like(params[name]) * mask)
    after = _head_outputs(model, proj, ids)
    key = next(k for k in after if f".{layer}." in k)
    diff = (after[key] - base[key]).abs().amax(dim=(0, 1))
    changed = diff > 1e-6
    expected = torch.zeros_like(changed)
    expected[head * hs:(head + 1) * hs] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("make,proj", [(tiny_neox, "attention.dense"), (tiny_gpt2, "attn.c_proj")])
def test_a_heads_output_projection_entries_read_only_that_head(make, proj):
    """Oracle: with head h's slice of the projection input zeroed, its projection entries do nothing."""
    model = make()
    comps = discover_components(model)
    head, hs = 1, 8
    proj_module = dict(model.named_modules())[f"{'gpt_neox.layers' if proj.startswith('attention') else 'transformer.h'}.0.{proj}"]
    weight_name = next(n for n in comps[f"layers.0.heads.{head}"] if proj in n)
    mask = comps[f"layers.0.heads.{head}"][weight_name]

    def zero_head(mod, args):
        x = args[0].clone()
        x[..., head * hs:(head + 1) * hs] = 0
        return (x,)

    ids = torch.randint(0, 64, (2, 16))
    handle = proj_module.register_forward_pre_hook(zero_head)
    with torch.no_grad():
        before = model(ids).logits
        proj_module.weight.add_(torch.randn_like(proj_module.weight) * mask)
        after = model(ids).logits
    handle.remove()
    assert torch.equal(before, after)
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, after)  # without the hook, the change shows


def test_heads_of_a_layer_partition_the_fused_qkv_rows():
    model = tiny_neox()
    comps = discover_components(model)
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    masks = torch.stack([comps[f"layers.0.heads.{h}"][name] for h in range(4)])
    assert torch.equal(masks.sum(0), torch.ones_like(masks[0], dtype=torch.long))


def test_glob_patterns_select_components_in_model_order():
    comps = discover_components(tiny_neox())
    assert list(select_components(comps, ["*.mlp", "embed"])) == ["layers.0.mlp", "layers.1.mlp", "embed"]
    assert len(select_components(comps, "layers.1.heads.*")) == 4


def test_unknown_pattern_is_an_error_listing_what_exists():
    with pytest.raises(ValueError, match="matches no component.*layers.0.heads.0"):
        select_components(discover_components(tiny_neox()), ["layers.9.*"])


def test_none_means_the_whole_model_as_one_component():
    model = tiny_neox()
    comps = resolve_components(model, None)
    assert list(comps) == ["all"] and set(comps["all"]) == {n for n, _ in model.named_parameters()}


def test_explicit_component_with_an_unknown_parameter_is_an_error():
    with pytest.raises(ValueError, match="does not have"):
        resolve_components(tiny_neox(), {"x": {"nope.weight": None}})
