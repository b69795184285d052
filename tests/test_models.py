"""Model adapters (lit_susc.models): family knowledge lives in one module per family, and only there."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from lit_susc import models
from lit_susc.aux.features import ResidualFeatures
from lit_susc.components import discover_components, resolve_components
from lit_susc.models import Capture, ModelAdapter, register_adapter
from lit_susc.prefix import component_cut

ROOT = Path(__file__).resolve().parents[1]

# Parameter and module names of the built-in families (whole words where the name is short).
FAMILY_NAMES = [r"gpt_neox", r"gpt2", r"query_key_value", r"attention\.dense", r"embed_in", r"embed_out", r"lm_head",
                r"transformer\.h\b", r"c_attn", r"c_proj", r"c_fc", r"\bwte\b", r"\bwpe\b", r"input_layernorm",
                r"post_attention_layernorm", r"final_layer_norm", r"\bln_f\b", r"\bln_[12]\b",
                r"embed_tokens", r"self_attn", r"\b[qkvo]_proj\b", r"qkv_proj", r"\b(gate|up|down)_proj\b",
                r"gate_up_proj", r"\b[qk]_norm\b", r"post_feedforward_layernorm", r"layer_types"]


def neox_config():
    return GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32)


def gpt2_config():
    return GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)


def test_no_library_module_outside_models_names_a_family_parameter():
    """Oracle: a grep of lit_susc/**/*.py and callbacks/*.py, lit_susc/models/ and lit_susc/tinylm.py
    (which builds the offline model) left out, finds none of the built-in families' names."""
    library = ROOT / "lit_susc"
    files = [p for p in library.rglob("*.py") if p.relative_to(library).parts[0] != "models"
             and p != library / "tinylm.py"] + sorted((ROOT / "callbacks").glob("*.py"))
    assert len(files) > 20
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if any(re.search(name, line) for name in FAMILY_NAMES)]
    assert found == []


class Toy(nn.Module):
    """A two-block model that no built-in adapter knows."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="toy")
        self.embed = nn.Embedding(8, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])


class ToyAdapter(ModelAdapter):
    def components(self, model):
        out = {f"layers.{layer}.mlp": {f"blocks.{layer}.weight": None, f"blocks.{layer}.bias": None}
               for layer in range(len(model.blocks))}
        return {**out, "embed": {"embed.weight": None}}


def test_a_registered_adapter_gives_a_new_family_its_components(monkeypatch):
    """Oracle: the adapter's own components. Adding a family is one class and one register_adapter call."""
    monkeypatch.setattr(models, "ADAPTERS", dict(models.ADAPTERS))  # the registration ends with the test
    model = Toy()
    register_adapter("toy", ToyAdapter())
    assert discover_components(model) == ToyAdapter().components(model)
    assert list(resolve_components(model, ["*.mlp"])) == ["layers.0.mlp", "layers.1.mlp"]


def test_an_unregistered_model_type_is_refused_naming_the_known_ones():
    known = re.escape(f"model type 'toy' (known: {sorted(models.ADAPTERS)}); pass components explicitly")
    assert {"gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "mistral", "olmo2", "phi3"} <= set(models.ADAPTERS)
    with pytest.raises(ValueError, match=known):
        discover_components(Toy())


@pytest.mark.parametrize("build,config", [(GPTNeoXForCausalLM, neox_config), (GPT2LMHeadModel, gpt2_config)])
def test_discovery_on_the_meta_device_equals_discovery_on_a_real_model(build, config):
    """Oracle: discovery on the model with real weights. Masks come from shapes only, so a model on
    the meta device (no memory for its weights) gets the same components, masks and all."""
    with torch.device("meta"):
        meta = build(config())
    real = build(config())
    on_meta, on_real = discover_components(meta), discover_components(real)
    assert list(on_meta) == list(on_real)
    for name, component in on_real.items():
        assert list(on_meta[name]) == list(component), name
        for param, mask in component.items():
            other = on_meta[name][param]
            assert (mask is None and other is None) or torch.equal(other, mask), (name, param)


def test_gpt2_runs_uncached():
    """Oracle: GPT-2's forward adds position embeddings to its input, so its adapter places no parameter
    and no component gets a cut (every chain runs the full model)."""
    model = GPT2LMHeadModel(gpt2_config())
    assert all(component_cut(model, c) is None for c in discover_components(model).values())


def test_an_unregistered_family_gets_residual_features_from_blocks_found_by_shape(monkeypatch):
    """Oracle: transformers' output_hidden_states of a Llama, with its adapter unregistered for the test."""
    monkeypatch.setattr(models, "ADAPTERS", {k: v for k, v in models.ADAPTERS.items() if k != "llama"})
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=16)).eval()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
        features = ResidualFeatures(model, [0, 2])(ids)
    assert torch.equal(features, torch.cat([hidden[0], hidden[2]], dim=-1))


def test_a_capture_returns_the_tensors_up_to_its_stop_and_runs_nothing_after():
    """Oracle: the layers applied by hand; a hook on the last layer counts whether it ran."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    ran = []
    model[2].register_forward_hook(lambda *_: ran.append(1))
    x = torch.randn(5, 3)
    with Capture() as capture:
        capture.input_of(model[1], "in")
        capture.output_of(model[1], "out", stop=True)
        values = capture.run(lambda: model(x))
    assert torch.equal(values["in"], model[0](x)) and torch.equal(values["out"], torch.tanh(model[0](x)))
    assert ran == []
    model(x)
    assert ran == [1]  # leaving the with block took the hooks off
