"""Known bad input ends with one ``lit-susc: error:`` line that names the file or the field, and exit status 2.

Each test feeds ``run.main`` one mistake a user makes (or one fault a machine throws) and reads what
the command line prints.
"""

import errno
import json
import shutil
import time

import huggingface_hub
import pyarrow.parquet as pq
import pytest
from safetensors import SafetensorError
from tiny_runs import sample_config, short_documents, write_yaml

import run
from lit_susc import rundir
from lit_susc.rundir import checksum_path, write_json

UNREACHABLE = "http://127.0.0.1:9"
"""A hub endpoint that refuses every connection at once (the discard port), online or not."""


def error_line(capsys, argv) -> str:
    """The one error line ``run.main(argv)`` prints, last on stderr, with no traceback; it must exit
    with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lit-susc: error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def documents(tmp_path):
    return short_documents(tmp_path / "docs")


def sample_argv(tmp_path, model, source, **keys) -> list[str]:
    """``sample --config`` of ``model`` on ``source`` into tmp_path/out (tiny_runs.sample_config, the
    ``embed`` component only), with the ``model:`` keys ``keys``."""
    config = sample_config(model, source, context=16, observed=2)
    config["model"].update(output_dir=str(tmp_path / "out"), components=["embed"], **keys)
    return ["sample", "--config", str(write_yaml(tmp_path / "sample.yaml", config))]


# ----------------------------------------------------------------------------- the model and its hub


def test_a_hub_model_without_the_hub_says_so_at_once_and_how_to_use_a_local_directory(tmp_path, documents,
                                                                                    monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNREACHABLE)
    start = time.monotonic()
    line = error_line(capsys, sample_argv(tmp_path, "lit-susc-tests/no-such-model", documents))
    assert time.monotonic() - start < 15  # not after the hub client's 30 s of retries
    assert "model 'lit-susc-tests/no-such-model' is neither a local directory nor in the hub cache" in line
    assert "hub is out of reach" in line and "pretrained: /path/to/" in line


def test_a_hub_dataset_without_the_hub_says_so_at_once_and_how_to_use_a_local_file(tmp_path, tiny_lm_dir,
                                                                                  monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNREACHABLE)
    start = time.monotonic()
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, "lit-susc-tests/no-such-dataset"))
    assert time.monotonic() - start < 15
    assert "data.source 'lit-susc-tests/no-such-dataset' is a hub dataset and the hub is out of reach" in line
    assert "data.source: /path/to/data.jsonl" in line


def test_a_mistyped_model_directory_is_missing_not_looked_up_on_the_hub(tmp_path, documents, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, sample_argv(tmp_path, "./modles/x", documents))
    assert line.startswith("lit-susc: error: model directory ./modles/x does not exist")


def test_a_mistyped_data_directory_is_missing_not_looked_up_on_the_hub(tmp_path, tiny_lm_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, "./corpra/wiki"))
    assert line.startswith("lit-susc: error: data source ./corpra/wiki does not exist")


@pytest.mark.parametrize("name,message", [
    ("./modles/x", "model directory ./modles/x does not exist"),
    ("lit-susc-tests/no-such-model", "is neither a local directory nor in the hub cache"),
])
def test_the_components_command_finds_a_model_as_sample_does(tmp_path, monkeypatch, capsys, name, message):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.chdir(tmp_path)
    assert message in error_line(capsys, ["components", "--pretrained", name])


def test_a_model_directory_without_tokenizer_files_names_them(tmp_path, tiny_lm_dir, documents, capsys):
    model = shutil.copytree(tiny_lm_dir, tmp_path / "model", ignore=shutil.ignore_patterns("tokenizer*"))
    line = error_line(capsys, sample_argv(tmp_path, model, documents))
    assert f"model '{model}' has no tokenizer files ({model} holds config.json," in line
    assert "it needs tokenizer.json" in line


def _truncated(path):
    path.write_bytes(path.read_bytes()[:-1000])


def _header_damaged(path):
    data = bytearray(path.read_bytes())
    data[10:40] = bytes(b ^ 0xFF for b in data[10:40])  # inside the JSON header after its 8-byte length
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, trained, remedy", [
    (_truncated, True, ("delete {out} and rerun the pipeline (or the command that trained it): its model stage "
                        "trains the tiny LM again")),
    (_header_damaged, False, "copy or download the model into {model} again"),
], ids=["truncated weights of a trained tiny LM", "damaged header of a copied model"])
def test_corrupt_model_weights_name_the_file_and_how_to_get_it_whole(tmp_path, tiny_lm_dir, documents, capsys,
                                                                      damage, trained, remedy):
    """It used to end in safetensors' traceback from inside transformers."""
    out = shutil.copytree(tiny_lm_dir.parent if trained else tiny_lm_dir, tmp_path / "tiny")
    model = out / "model" if trained else out
    damage(model / "model.safetensors")
    line = error_line(capsys, sample_argv(tmp_path, model, documents))
    assert line.startswith(f"lit-susc: error: {model / 'model.safetensors'} is corrupt (Error while deserializing")
    assert line.endswith(remedy.format(out=out, model=model))
    assert not (tmp_path / "out" / "summary.json").exists()


# ----------------------------------------------------------------------------- config files and options


@pytest.mark.parametrize("command", [["sample", "--config"], ["aux", "fit", "-c"], ["cluster", "--config"]])
def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, command, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("output_dir: out\nsgld: {lr: 1e-3\nchains: 2\n")
    line = error_line(capsys, [*command, str(path)])
    assert line.startswith(f"lit-susc: error: {path} is not valid YAML at line 3, column 7:")


def test_an_unknown_key_in_a_sample_config_is_named_without_the_union_header(tmp_path, tiny_lm_dir, documents,
                                                                            capsys):
    data = {**sample_config(tiny_lm_dir, documents, 16, 2)["model"]["data"], "contxt_length": 16}
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, documents, data=data))
    assert line == "lit-susc: error: model.data: Option 'contxt_length' is not accepted"


def test_a_value_of_the_wrong_type_names_the_field_and_the_value(tmp_path, tiny_lm_dir, documents, capsys):
    data = {**sample_config(tiny_lm_dir, documents, 16, 2)["model"]["data"], "context_length": "many"}
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, documents, data=data))
    assert line == "lit-susc: error: model.data: context_length: Expected a <class 'int'>. Got value: many"


def test_an_unknown_key_in_an_aux_config_is_named(tmp_path, capsys):
    config = write_yaml(tmp_path / "fit.yaml", {"sample_dir": str(tmp_path), "output_dir": str(tmp_path / "aux"),
                                                "batch_sise": 16})
    line = error_line(capsys, ["aux", "fit", "--config", str(config)])
    assert line == "lit-susc: error: Option 'batch_sise' is not accepted"


def test_an_unknown_option_of_cluster_is_named(tmp_path, capsys):
    line = error_line(capsys, ["cluster", "--input_dir", str(tmp_path), "--alhpa", "0.01"])
    assert line == "lit-susc: error: unrecognized arguments: --alhpa 0.01"


def test_a_missing_config_file_is_named(tmp_path, capsys):
    line = error_line(capsys, ["aux", "fit", "--config", str(tmp_path / "nope.yaml")])
    assert line == f"lit-susc: error: config: File does not exist: '{tmp_path / 'nope.yaml'}'"


@pytest.mark.parametrize("command", [["cluster"], ["aux", "fit"]])
def test_help_still_prints_the_options_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lit-susc {' '.join(command)}")


# ----------------------------------------------------------------------------- text sources


def test_a_jsonl_text_that_is_a_number_names_file_and_line(tmp_path, tiny_lm_dir, capsys):
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"text": "def f(): return 1\n" * 20}) + "\n" + json.dumps({"text": 42}) + "\n")
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, source))
    assert f"{source}:2: field 'text' is not a string but int 42" in line


def test_a_jsonl_parse_error_names_file_and_line(tmp_path, tiny_lm_dir, capsys):
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"text": "x = 1\n" * 40}) + "\n\n" + '{"text": "unterminated\n')
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, source))
    assert f"{source}:3:23 is not valid JSON: Invalid control character;" in line


def test_a_text_file_that_is_not_utf8_names_file_and_line(tmp_path, tiny_lm_dir, capsys):
    docs = short_documents(tmp_path / "docs", n=4)
    (docs / "latin1.txt").write_bytes("first line\ncaf\u00e9\n".encode("latin-1"))
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, docs))
    assert f"{docs / 'latin1.txt'}:2 is not UTF-8 (invalid continuation byte: byte 0xe9)" in line


def test_a_jsonl_line_that_is_not_utf8_names_file_and_line(tmp_path, tiny_lm_dir, capsys):
    source = tmp_path / "docs.jsonl"
    source.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, source))
    assert f"{source}:2 is not UTF-8" in line


# ----------------------------------------------------------------------------- the run directory and the disk


@pytest.mark.parametrize("sidecar", [True, False], ids=["with its checksum", "written before checksums"])
def test_a_truncated_run_json_is_named_with_the_remedy(tmp_path, tiny_lm_dir, documents, sidecar, capsys):
    record = tmp_path / "out" / "run.json"
    write_json(record, {"identity": {"sgld": {"lr": 0.001}}})
    if not sidecar:
        checksum_path(record).unlink()
    record.write_text(record.read_text()[:20])
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, documents))
    assert line.startswith(f"lit-susc: error: {record} is corrupt") and f"delete {tmp_path / 'out'}" in line


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def no_space_for_safetensors(*args, **kwargs):  # safetensors' Rust I/O error: no errno, the OS's words
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')


@pytest.mark.parametrize(("module", "writer", "full", "written"), [
    (pq, "write_table", no_space, "trace.parquet"),
    (rundir, "save_file", no_space_for_safetensors, "susceptibility.safetensors"),
], ids=["OSError", "SafetensorError"])
def test_a_full_disk_names_the_file_being_written(tmp_path, tiny_lm_dir, documents, monkeypatch, capsys, module,
                                                  writer, full, written):
    monkeypatch.setattr(module, writer, full)
    line = error_line(capsys, sample_argv(tmp_path, tiny_lm_dir, documents))
    assert line.startswith(f"lit-susc: error: cannot write {tmp_path / 'out'}/")
    assert f"{written}: " in line and "No space left on device" in line and "(the disk or your quota is full)" in line
    assert not list((tmp_path / "out").rglob("*.tmp*"))  # the half-written temporary is gone
