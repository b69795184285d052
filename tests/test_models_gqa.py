"""The grouped-query-attention families of the Llama layout (lit_susc.models.llama and its subclasses).

Tiny models built from each family's config class, no download: Llama, Qwen2 (q/k/v biases, a
sliding-window layer after a full one), Qwen3 (per-head q/k norms, head_dim != hidden / heads),
Mistral (one sliding window for all layers), OLMo 2 (post-normed branches, q/k norms over all heads)
and Phi-3 (fused qkv_proj and gate_up_proj). Oracles are named in each test.
"""

import pytest
import torch
from tiny_runs import assert_same_chi, chi_cached_and_plain
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from lit_susc import SGLDConfig
from lit_susc.components import discover_components, resolve_components
from lit_susc.lm import per_token_loss
from lit_susc.prefix import Cut, PrefixCache, component_cut, trunk_hidden

VOCAB, HEADS, LAYERS = 96, 4, 2
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"use_sliding_window": True, "max_window_layers": 1, "sliding_window": 4}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 4}),
    "olmo2": (Olmo2Config, Olmo2ForCausalLM, {}),
    "phi3": (Phi3Config, Phi3ForCausalLM, {}),
}


def tiny(family: str, kv_heads: int = 2, **overrides) -> nn.Module:
    config_class, model_class, extra = FAMILIES[family]
    config = config_class(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          num_key_value_heads=kv_heads, intermediate_size=64, max_position_embeddings=64,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2, **{**extra, **overrides})
    torch.manual_seed(0)
    return model_class(config).eval()


def _ids(seed, batch=4, length=16):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _head_dim(model):
    return getattr(model.config, "head_dim", None) or model.config.hidden_size // HEADS


def _o_proj_input(model, layer, ids):
    """The input of block ``layer``'s o_proj: the heads' outputs side by side, head h at [h*d, (h+1)*d)."""
    captured = {}
    o_proj = model.model.layers[layer].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda mod, args: captured.__setitem__("x", args[0].detach()))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return captured["x"]


def _perturb(model, component, seed=1):
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mask in component.items():
            noise = torch.randn(params[name].shape, generator=gen)
            params[name].add_(noise if mask is None else noise * mask)


def _moved_heads(model, component, layer):
    """Which heads' slices of the o_proj input move at all (bitwise) when the entries of ``component`` are perturbed."""
    ids = _ids(0)
    before = _o_proj_input(model, layer, ids)
    _perturb(model, component)
    diff = (_o_proj_input(model, layer, ids) - before).abs().amax(dim=(0, 1))
    return [h for h, part in enumerate(diff.view(HEADS, -1)) if part.max() > 0]


def _without_cross_head_norms(model):
    """OLMo 2 normalises all heads' queries (keys) together, so one head's rows rescale every head's;
    with those two norms replaced by the identity, the heads are as separate as Llama's."""
    if model.config.model_type == "olmo2":
        for block in model.model.layers:
            block.self_attn.q_norm, block.self_attn.k_norm = nn.Identity(), nn.Identity()
    return model


@pytest.mark.parametrize("kv_heads", [2, HEADS])
@pytest.mark.parametrize("family", FAMILIES)
def test_perturbing_a_head_moves_only_its_slice_of_the_o_proj_input(family, kv_heads):
    """Oracle: the heads' outputs as o_proj reads them. Noise on every masked entry of ``heads.2``
    (its q rows; its k and v rows too when each head has its own) moves head 2's slice and no other."""
    model = _without_cross_head_norms(tiny(family, kv_heads))
    assert _moved_heads(model, discover_components(model)["layers.1.heads.2"], layer=1) == [2]


@pytest.mark.parametrize("family", FAMILIES)
def test_perturbing_a_kv_group_moves_the_slices_of_its_query_heads_only(family):
    """Oracle: the heads' outputs as o_proj reads them. With 4 query heads in 2 groups, noise on
    ``kv.1`` (the k and v rows of group 1) moves heads 2 and 3, the heads that read it."""
    model = _without_cross_head_norms(tiny(family))
    assert _moved_heads(model, discover_components(model)["layers.0.kv.1"], layer=0) == [2, 3]


def test_olmo2s_query_norm_couples_the_heads():
    """Oracle: OLMo 2's q_norm, one RMS over all heads' queries: without the identity swap of the
    tests above, a head's rows move the other heads' outputs as well (documented in olmo2.py)."""
    model = tiny("olmo2")
    assert _moved_heads(model, discover_components(model)["layers.1.heads.2"], layer=1) == [0, 1, 2, 3]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_heads_o_proj_entries_read_only_that_head(family):
    """Oracle: with head 1's slice of the o_proj input zeroed, noise on the component's o_proj
    entries leaves the logits bitwise unchanged; without the zeroing the noise shows."""
    model = tiny(family)
    o_proj = model.model.layers[0].self_attn.o_proj
    d = _head_dim(model)
    component = discover_components(model)["layers.0.heads.1"]
    only_o_proj = {name: mask for name, mask in component.items() if ".o_proj." in name}

    def zero_head(mod, args):
        x = args[0].clone()
        x[..., d:2 * d] = 0
        return (x,)

    ids = _ids(0)
    handle = o_proj.register_forward_pre_hook(zero_head)
    with torch.no_grad():
        before = model(ids).logits
        _perturb(model, only_o_proj)
        after = model(ids).logits
    handle.remove()
    assert torch.equal(before, after)
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_components_come_layer_by_layer_heads_then_kv_groups_then_the_mlp(family):
    """Oracle: the naming scheme of lit_susc.models.llama, written out for 2 layers of 4 heads in 2 groups."""
    per_layer = [*(f"heads.{h}" for h in range(HEADS)), "kv.0", "kv.1", "mlp"]
    expected = [f"layers.{layer}.{name}" for layer in range(LAYERS) for name in per_layer] + ["embed", "unembed"]
    assert list(discover_components(tiny(family))) == expected
    assert not any(".kv." in name for name in discover_components(tiny(family, kv_heads=HEADS)))


@pytest.mark.parametrize("kv_heads", [2, HEADS])
@pytest.mark.parametrize("family", FAMILIES)
def test_components_partition_every_parameter_but_the_norms(family, kv_heads):
    """Oracle: the parameter list. Summed over all components, each entry of a projection, MLP,
    embedding or head is covered exactly once, and the norm weights (block norms, q/k norms, final
    norm) not at all."""
    model = tiny(family, kv_heads)
    coverage = {name: torch.zeros(p.shape, dtype=torch.long) for name, p in model.named_parameters()}
    for component in discover_components(model).values():
        for name, mask in component.items():
            coverage[name] += 1 if mask is None else mask.long()
    norms = {name for name in coverage if "norm" in name}
    assert norms and all(coverage[name].max() == 0 for name in norms)
    assert all(torch.equal(coverage[name], torch.ones_like(coverage[name])) for name in coverage if name not in norms)


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_on_the_meta_device_equals_discovery_on_a_real_model(family):
    """Oracle: discovery on the model with real weights; the masks come from shapes only."""
    real = discover_components(tiny(family))
    with torch.device("meta"):
        meta = tiny(family)
    on_meta = discover_components(meta)
    assert list(on_meta) == list(real)
    for name, component in real.items():
        assert list(on_meta[name]) == list(component), name
        assert all(torch.equal(on_meta[name][p], mask) for p, mask in component.items() if mask is not None), name


REAL_CONFIGS = {  # from the models' config.json files, written out
    "Qwen2.5-0.5B": (Qwen2Config, Qwen2ForCausalLM, {
        "num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
        "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True}),
    "Llama-3.2-1B": (LlamaConfig, LlamaForCausalLM, {
        "num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True}),
    "OLMo-2-0425-1B": (Olmo2Config, Olmo2ForCausalLM, {
        "num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 16,
        "intermediate_size": 8192, "vocab_size": 100352, "tie_word_embeddings": False}),
    "Mistral-7B": (MistralConfig, MistralForCausalLM, {
        "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "vocab_size": 32000, "tie_word_embeddings": False}),
}


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_the_component_count_of_a_real_config_on_the_meta_device(name):
    """Oracle: L layers x (H heads + K kv groups when K < H + 1 MLP) + embed (+ unembed when untied);
    Qwen2.5-0.5B: 24 x 14 + 24 x 2 + 24 + 1 = 409. The masks fit the parameters' shapes."""
    config_class, model_class, fields = REAL_CONFIGS[name]
    config = config_class(**fields)
    with torch.device("meta"):
        model = model_class(config)
    n_layers, n_heads, n_kv = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
    expected = n_layers * (n_heads + (n_kv if n_kv < n_heads else 0) + 1) + (1 if config.tie_word_embeddings else 2)
    components = resolve_components(model, ["*"])  # checks every mask against its parameter's shape
    assert len(components) == expected
    if name == "Qwen2.5-0.5B":
        assert expected == 409
    assert list(components)[:3] == ["layers.0.heads.0", "layers.0.heads.1", "layers.0.heads.2"]
    assert list(components)[-1] == ("embed" if config.tie_word_embeddings else "unembed")


@pytest.mark.parametrize("family", FAMILIES)
def test_each_component_starts_at_its_first_block_keeping_the_attention_of_an_mlps_block(family):
    """Oracle: the sequential residual a = h + attn(.), h' = a + mlp(.): an MLP leaves its block's
    attention output alone, a head or kv group changes the block from its input (so block 0's have
    no cut), the head alone starts after the last block, the embedding gets no cut."""
    model = tiny(family)
    comps = discover_components(model)
    assert component_cut(model, comps["layers.1.heads.0"]) == Cut(1)
    assert component_cut(model, comps["layers.1.kv.1"]) == Cut(1)
    assert component_cut(model, comps["layers.0.heads.0"]) is None
    assert component_cut(model, comps["layers.0.mlp"]) == Cut(0, "attention")
    assert component_cut(model, comps["layers.1.mlp"]) == Cut(1, "attention")
    assert component_cut(model, comps["unembed"]) == Cut(LAYERS)
    assert component_cut(model, comps["embed"]) is None


def test_a_tied_embedding_is_one_component_that_runs_uncached():
    """Oracle: Qwen2.5's tied lm_head is the embedding tensor, so moving ``embed`` moves the head too."""
    model = tiny("qwen2", tie_word_embeddings=True)
    comps = discover_components(model)
    assert "unembed" not in comps and comps["embed"] == {"model.embed_tokens.weight": None}
    assert model.get_output_embeddings().weight is model.model.embed_tokens.weight
    assert component_cut(model, comps["embed"]) is None


@pytest.mark.parametrize("cut", [Cut(1), Cut(LAYERS), Cut(0, "attention"), Cut(1, "attention")])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_suffix_from_a_cached_prefix_gives_the_full_forward_pass(family, cut):
    """Oracle: the uncached forward pass, bitwise: the last hidden state and the per-token losses. For
    Qwen2 the cut at block 1 starts at a sliding-window layer that follows a full-attention one (a
    suffix run without the sliced ``layer_types`` would give it the full-attention mask)."""
    model = tiny(family)
    layer_types = list(getattr(model.config, "layer_types", None) or [])
    ids = _ids(0)
    cache = PrefixCache(model, 1 << 30, {"observation": [ids.numel()]})
    cache.plan()
    cache.cut = cut
    with torch.no_grad():
        cached = cache.view("observation", 0, ids)
        assert torch.equal(trunk_hidden(model, cached), model.base_model(input_ids=ids).last_hidden_state)
        assert torch.equal(per_token_loss(model, cached), per_token_loss(model, ids))
    assert list(getattr(model.config, "layer_types", None) or []) == layer_types  # restored after each suffix run


CHI_COMPONENTS = ["layers.1.heads.1", "layers.1.kv.0", "layers.0.mlp", "embed", "unembed"]


@pytest.mark.parametrize("family", FAMILIES)
def test_chi_with_caching_equals_chi_without(family):
    """Oracle: a run without caching with the same seeds (chi equal to 1e-6 relative) for a head,
    a kv group, an MLP of block 0 (its attention output cached), the embedding and the unembedding;
    a hook counting calls of block 0's attention shows the cache was used."""
    model = tiny(family)
    (cached, cached_calls), (plain, plain_calls) = chi_cached_and_plain(
        model, model.model.layers[0].self_attn, [_ids(1), _ids(2)], [_ids(4), _ids(5)], CHI_COMPONENTS,
        SGLDConfig(lr=1e-4, nbeta=30.0, localization=300.0, chains=2, draws=3, burn_in=1, seed=7))
    assert_same_chi(cached, plain, CHI_COMPONENTS)
    assert cached_calls < 0.5 * plain_calls, (cached_calls, plain_calls)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", ["layers.1.heads.2", "layers.1.kv.1", "layers.0.mlp"])
def test_a_chain_moves_only_the_entries_of_its_component(family, name):
    """Oracle: the restriction's definition. After SGLD steps of a chain of the component, every
    entry that moved is one of its masked entries, and each of its parameters moved."""
    from lit_susc.chains import ChainEngine
    from lit_susc.schedule import Unit

    model = tiny(family)
    w_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    component = discover_components(model)[name]
    optimizer = SGLDConfig(lr=1e-3, nbeta=20.0, localization=100.0).make_optimizer(list(model.parameters()))
    ids = _ids(3)
    engine = ChainEngine(model, per_token_loss, optimizer, lambda loss: loss.backward(), torch.device("cpu"),
                         reference=ids, observation=[ids])
    engine.begin(component, [Unit(0, 0, name, 0)], seed=0, state_dir=lambda unit: None)
    for _ in range(3):
        engine.step([ids], [None])
    for param_name, p in model.named_parameters():
        moved = p.detach() != w_star[param_name]
        mask = component.get(param_name)
        allowed = (torch.zeros_like(moved) if param_name not in component
                   else torch.ones_like(moved) if mask is None else mask)
        assert not (moved & ~allowed).any(), f"{param_name} moved outside {name}"
        if param_name in component:
            assert moved.any(), f"{param_name} of {name} did not move"
    engine.restrict(component, lone=True)
    assert all(torch.equal(p.detach(), w_star[n]) for n, p in model.named_parameters())


def test_the_components_command_lists_a_model_from_its_config_alone(tmp_path, capsys):
    """``run.py components`` on a directory holding only Qwen2.5-0.5B's config.json (no weights);
    oracle: the count formula, and a query head's size by hand (64 q rows of 896 weights and their
    biases, and 64 o_proj columns of 896)."""
    import run
    from lit_susc.components_cli import main as components

    config_class, _, fields = REAL_CONFIGS["Qwen2.5-0.5B"]
    config_class(**fields).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    run.main(["components", "--pretrained", str(tmp_path)])
    assert "409 components of Qwen2ForCausalLM (qwen2)" in capsys.readouterr().out
    sizes = components(["--pretrained", str(tmp_path)])
    assert len(sizes) == 409
    assert sizes["layers.0.heads.0"] == 64 * 896 + 64 + 896 * 64
    assert sizes["layers.0.kv.1"] == 2 * (64 * 896 + 64)
    assert list(components(["--pretrained", str(tmp_path), "--components", "layers.2[0-3].kv.*"])) == [
        f"layers.{layer}.kv.{g}" for layer in range(20, 24) for g in range(2)]
