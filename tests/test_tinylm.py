import dataclasses
import json
import time

import pytest
import torch
from transformers import GPTNeoXForCausalLM, LlamaForCausalLM

from lit_susc.tinylm import SUMMARY_FILE, TinyLMConfig, load_causal_lm, train_tiny_lm

TINY = TinyLMConfig(
    vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, context_length=32,
    train_steps=30, batch_size=8, lr=1e-2, warmup_steps=5, eval_contexts=16,
)


def _train(out_dir, config: TinyLMConfig = TINY):
    return train_tiny_lm(out_dir, config, progress=False, max_documents=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tiny")
    return out_dir, _train(out_dir)


def test_training_reduces_loss(trained):
    out_dir, _ = trained
    summary = json.loads((out_dir / SUMMARY_FILE).read_text())
    assert summary["steps"] == TINY.train_steps
    assert summary["final_loss"] < summary["initial_loss"] - 0.5


def test_trained_model_loads_as_pythia_architecture(trained):
    _, model_dir = trained
    model, tokenizer = load_causal_lm(str(model_dir))
    assert isinstance(model, GPTNeoXForCausalLM) and not model.training
    assert model.config.use_parallel_residual and not model.config.tie_word_embeddings
    assert model.config.rope_parameters["partial_rotary_factor"] == 0.25
    ids = torch.tensor([tokenizer.encode("import os\n", add_special_tokens=False)])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_second_call_is_cache_hit(trained):
    out_dir, model_dir = trained
    before = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*")}
    began = time.perf_counter()
    assert _train(out_dir) == model_dir
    assert time.perf_counter() - began < 1.0
    assert {p: p.stat().st_mtime_ns for p in out_dir.rglob("*")} == before


def test_cache_with_other_config_raises(trained):
    out_dir, _ = trained
    with pytest.raises(ValueError, match="another out_dir"):
        _train(out_dir, dataclasses.replace(TINY, seed=1))


def test_training_is_deterministic(trained, tmp_path):
    _, model_dir = trained
    first, _ = load_causal_lm(str(model_dir))
    second, _ = load_causal_lm(str(_train(tmp_path)))
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_llama_architecture_trains_a_grouped_query_model(tiny_llama_dir):
    summary = json.loads((tiny_llama_dir.parent / SUMMARY_FILE).read_text())
    assert summary["final_loss"] < summary["initial_loss"] - 0.5
    model, _ = load_causal_lm(str(tiny_llama_dir))
    assert isinstance(model, LlamaForCausalLM)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert summary["config"]["architecture"] == "llama"


def test_a_model_trained_before_the_architecture_field_is_still_recognised(trained):
    """Fields added later are left out of the recipe at their defaults: a summary written without
    them matches the default config (oracle: the cache hit of the same call)."""
    out_dir, model_dir = trained
    summary = json.loads((out_dir / SUMMARY_FILE).read_text())
    assert "architecture" not in summary["config"] and "num_key_value_heads" not in summary["config"]
    assert _train(out_dir) == model_dir


def test_the_progress_bar_counts_steps_to_train_steps_across_passes_over_the_data(tmp_path, capsys):
    """Lightning's own bar read 'Epoch 0/-2' (max_epochs=-1) and restarted at each pass over the data;
    here 2 batches of 4 make a pass, so 5 steps take three."""
    config = dataclasses.replace(TINY, train_steps=5, batch_size=4, max_train_contexts=8, eval_contexts=4)
    train_tiny_lm(tmp_path, config, progress=True, max_documents=5)
    out = capsys.readouterr().out
    bar = [line.strip() for line in out.replace("\r", "\n").splitlines() if line.startswith("training tiny LM")]
    assert [line.split("|")[2].split()[0] for line in bar][:3] == ["0/5", "1/5", "2/5"]
    assert bar[-1].startswith("training tiny LM: 100%") and " 5/5 " in bar[-1]
    assert "Epoch" not in out


def test_the_command_line_loads_a_model_without_transformers_progress_bar(trained, capsys):
    """run.py calls quiet_lightning in every process (here: for good, as any test that calls run.main does)."""
    from lit_susc.console import quiet_lightning

    quiet_lightning()
    load_causal_lm(str(trained[1]))
    assert "Loading weights" not in capsys.readouterr().err


@pytest.mark.parametrize("changes,message", [
    ({"architecture": "mamba"}, "architecture must be"),
    ({"num_key_value_heads": 1}, "for architecture 'llama'"),
    ({"architecture": "llama", "num_key_value_heads": 3}, "must be >= 1 and divide num_heads=2"),
])
def test_bad_architectures_are_value_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)


def test_checkpoints_are_saved_at_their_steps_and_checked_when_reused(tmp_path):
    """Oracle: the checkpoint at the last step is the final model, an earlier one differs from it, each
    loads with its tokenizer; a corrupt checkpoint file is refused on reuse."""
    from safetensors.torch import load_file

    from lit_susc.rundir import CorruptFileError
    from lit_susc.tinylm import TinyLMConfig, checkpoint_dir, load_causal_lm, train_tiny_lm

    config = TinyLMConfig(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                          context_length=16, train_steps=6, batch_size=4, warmup_steps=1, eval_contexts=4,
                          checkpoints=[0, 3, 6])
    model_dir = train_tiny_lm(tmp_path, config, progress=False, max_documents=10)
    final = load_file(str(model_dir / "model.safetensors"))
    weights = {s: load_file(str(checkpoint_dir(tmp_path, s) / "model.safetensors")) for s in (0, 3, 6)}
    assert all(torch.equal(final[k], weights[6][k]) for k in final)
    assert not all(torch.equal(weights[0][k], weights[3][k]) for k in final)
    _, tokenizer = load_causal_lm(checkpoint_dir(tmp_path, 0))
    assert len(tokenizer) == len(load_causal_lm(model_dir)[1])
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["config"]["checkpoints"] == [0, 3, 6]
    assert sorted(summary["checkpoints_sha256"]) == sorted(
        str(p.relative_to(tmp_path / "checkpoints")) for p in (tmp_path / "checkpoints").rglob("*") if p.is_file())
    path = checkpoint_dir(tmp_path, 3) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CorruptFileError, match="step00000003"):
        train_tiny_lm(tmp_path, config, progress=False, max_documents=10)


@pytest.mark.parametrize("steps", [[-1], [7], [2, 2], [1.5]])
def test_checkpoint_steps_outside_the_training_are_refused(steps):
    from lit_susc.tinylm import TinyLMConfig

    with pytest.raises(ValueError, match="TinyLMConfig.checkpoints"):
        TinyLMConfig(train_steps=6, checkpoints=steps)
