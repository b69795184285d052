"""lit_susc.rundir: atomic writes, the claim / resume / finished protocol, shards, digests."""

import ast
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from lit_susc import SusceptibilityResult, read_chi
from lit_susc.cluster.stage import ClusterConfig, run_cluster_stage
from lit_susc.pipeline import Pipeline, PipelineConfig
from lit_susc.rundir import (
    FINISHED_MARKER,
    RunDirectoryError,
    atomic_path,
    claim,
    file_digest,
    is_finished,
    json_digest,
    mark_finished,
    read_shards,
    tensor_digest,
    weights_digest,
    write_json,
    write_memmap,
    write_shard,
)

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = {"sgld": {"lr": 1e-3}, "components": ["h0", "h1"], "model_digest": "abc"}


# ----------------------------------------------------------------------------- atomic writes


def test_a_writer_that_raises_keeps_the_previous_version_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"version": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"version": 2, "half')
        raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "result.json.sha256"]


def test_a_first_write_that_raises_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "sub" / "x.parquet") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert list((tmp_path / "sub").iterdir()) == []


@pytest.mark.parametrize("suffix, save", [(".npy", lambda f: np.save(f, np.arange(3))),
                                          (".npz", lambda f: sp.save_npz(f, sp.eye(3, format="csr")))])
def test_the_temporary_ends_in_the_suffix_a_library_would_append(tmp_path, suffix, save):
    path = tmp_path / f"out{suffix}"
    with atomic_path(path, suffix=suffix) as tmp:
        save(tmp)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_memory_mapped_file_appears_only_once_filled(tmp_path):
    path = tmp_path / "features.npy"
    with write_memmap(path, np.float32, (4, 2)) as out:
        out[:] = np.arange(8).reshape(4, 2)
        assert not path.exists()
    assert np.array_equal(np.load(path), np.arange(8, dtype=np.float32).reshape(4, 2))


def test_json_is_indented_by_two(tmp_path):
    write_json(tmp_path / "a.json", {"b": [1, 2], "a": None})
    assert (tmp_path / "a.json").read_text() == json.dumps({"b": [1, 2], "a": None}, indent=2)


# ----------------------------------------------------------------------------- claim, finished


def test_a_resumable_claim_is_fresh_then_resume_then_finished(tmp_path):
    run_dir = tmp_path / "run"
    assert claim(run_dir, IDENTITY, record="run.json", other="another run") == "fresh"
    assert json.loads((run_dir / "run.json").read_text()) == IDENTITY
    assert claim(run_dir, IDENTITY, record="run.json", other="another run") == "resume"
    mark_finished(run_dir, {"tokens": 3})
    assert claim(run_dir, IDENTITY, record="run.json", other="another run") == "finished"


def test_another_identity_is_refused_naming_the_keys_that_differ(tmp_path):
    claim(tmp_path, IDENTITY, record="run.json", other="the results of another run")
    changed = {**IDENTITY, "sgld": {"lr": 1e-2}, "observation_dtype": "bfloat16"}
    with pytest.raises(RunDirectoryError, match=r"holds the results of another run \(differs in: "
                                                r"observation_dtype, sgld\)"):
        claim(tmp_path, changed, record="run.json", other="the results of another run")
    assert issubclass(RunDirectoryError, ValueError)  # the CLI's one-line error, exit status 2


def test_a_directory_with_foreign_files_is_refused_but_known_ones_are_not(tmp_path):
    (tmp_path / "config.yaml").write_text("x: 1\n")
    assert claim(tmp_path, IDENTITY, record="run.json", other="another run", known=["config.yaml"]) == "fresh"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"not empty .*\(notes.txt\)"):
        claim(other, IDENTITY, record="run.json", other="another run", known=["config.yaml"])
    assert not (other / "run.json").exists()


def test_a_rank_that_does_not_write_claims_without_recording(tmp_path):
    assert claim(tmp_path / "out", IDENTITY, record="predict.json", other="x", write=False) == "fresh"
    assert not (tmp_path / "out").exists()


def test_a_record_written_with_the_outputs_counts_only_once_finished(tmp_path):
    write_json(tmp_path / "config.json", {**IDENTITY, "sgld": "other"})  # an earlier fit that crashed before its marker
    assert claim(tmp_path, IDENTITY, record="config.json", other="another fit", resumable=False) == "fresh"
    mark_finished(tmp_path, {})
    with pytest.raises(RunDirectoryError, match=r"differs in: sgld"):
        claim(tmp_path, IDENTITY, record="config.json", other="another fit", resumable=False)
    write_json(tmp_path / "config.json", {"config": IDENTITY, "results": [1]})
    assert claim(tmp_path, IDENTITY, record="config.json", view=lambda r: r["config"], other="another fit",
                 resumable=False) == "finished"


def test_finished_means_the_marker_exists(tmp_path):
    assert not is_finished(tmp_path)
    mark_finished(tmp_path, {"tokens": 3})
    assert is_finished(tmp_path) and (tmp_path / FINISHED_MARKER).exists()
    assert is_finished(tmp_path / "leak", "leak.json") is False


def _result(directory: Path, shard_tokens: int = 4) -> Path:
    chi = torch.arange(20, dtype=torch.float64).reshape(2, 10)
    SusceptibilityResult(chi=chi, components=["a", "b"], convention="seed", nbeta=10.0).save(directory, shard_tokens)
    return directory


def test_a_run_without_its_marker_is_unfinished_for_its_readers(tmp_path):
    run_dir = _result(tmp_path / "run")
    assert read_chi(run_dir).shape == (2, 10)
    (run_dir / FINISHED_MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="holds no finished susceptibility run"):
        read_chi(run_dir)


def test_a_stage_redoes_a_directory_whose_marker_was_deleted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "run"
    tokens = pa.table({"doc_id": np.zeros(60, dtype=np.int64), "position": np.arange(60)})
    SusceptibilityResult(chi=torch.as_tensor(rng.standard_normal((3, 60))), components=["a", "b", "c"],
                         convention="seed", nbeta=10.0, tokens=tokens).save(run_dir)
    config = ClusterConfig(input_dir=str(run_dir), k=8, min_size=5, alpha=1e-2, eps=1e-5, accelerator="cpu")
    out = run_cluster_stage(config, progress=False)
    run_cluster_stage(config, progress=False)
    assert "nothing to do" in capsys.readouterr().out
    (out / FINISHED_MARKER).unlink()
    run_cluster_stage(config, progress=False)
    assert "nothing to do" not in capsys.readouterr().out and is_finished(out)


@pytest.mark.parametrize("stage, marker", [("cluster", FINISHED_MARKER), ("analyse", "leak.json"),
                                           ("report", "index.html")])
def test_the_pipeline_skips_a_stage_only_while_its_directory_is_finished(tmp_path, stage, marker):
    pipeline = Pipeline(PipelineConfig(output_dir=str(tmp_path), sample={"model": {"pretrained": "some/model"}}))
    write_json(pipeline.state_dir / f"{stage}.json",
               {"stage": stage, "fingerprint": pipeline.fingerprint(stage), "finished": True})
    pipeline.stage_dir(stage).mkdir()
    (pipeline.stage_dir(stage) / marker).write_text("{}")
    assert pipeline.status(stage) == "finished"
    (pipeline.stage_dir(stage) / marker).unlink()
    assert pipeline.status(stage) == "resume"


def _modules():
    for path in [ROOT / "run.py", *sorted((ROOT / "lit_susc").rglob("*.py")), *sorted((ROOT / "callbacks").rglob("*.py"))]:
        if path != ROOT / "lit_susc" / "rundir.py":
            yield path, ast.parse(path.read_text())


def test_no_module_but_rundir_looks_for_the_finished_marker_itself():
    for path, tree in _modules():
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.Constant) and node.value == FINISHED_MARKER), \
                f"{path}:{node.lineno} names {FINISHED_MARKER}: ask lit_susc.rundir (is_finished, mark_finished, ...)"
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                for side in (node.left, node.right):
                    assert getattr(side, "id", getattr(side, "attr", None)) != "FINISHED_MARKER", \
                        f"{path}:{node.lineno} builds the marker's path: ask lit_susc.rundir.is_finished"


# ----------------------------------------------------------------------------- shards


def test_shards_read_any_range_of_tokens_and_rows(tmp_path):
    values = torch.arange(30, dtype=torch.float32).reshape(3, 10)
    shards = [{"start": a, "stop": min(a + 4, 10), "file": write_shard(tmp_path, "pcs", i, values[:, a:a + 4])}
              for i, a in enumerate(range(0, 10, 4))]
    assert shards[1]["file"] == "pcs/shard-00001.safetensors"

    def read(*args, **kw):
        return read_shards(tmp_path, shards, "pcs", *args, rows=3, dtype=torch.float32, **kw)

    assert torch.equal(read(), values)
    assert torch.equal(read(3, 9), values[:, 3:9])
    assert torch.equal(read(2, 7, components=[2, 0]), values[[2, 0], 2:7])
    assert read(6, 6).shape == (3, 0) and read(6, 6).dtype == torch.float32


def test_a_run_reads_back_across_its_shards(tmp_path):
    run_dir = _result(tmp_path, shard_tokens=3)
    assert torch.equal(read_chi(run_dir, 2, 8), torch.arange(20, dtype=torch.float64).reshape(2, 10)[:, 2:8])


# ----------------------------------------------------------------------------- digests


def _linear() -> nn.Module:
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.arange(6.0).reshape(2, 3) / 7)
        m.bias.copy_(torch.tensor([0.5, -1.0]))
    return m


def test_digests_never_change_since_identities_on_disk_hold_them():
    # values of the formulas that wrote existing run.json / aux.json / pipeline state files
    assert weights_digest(_linear(), named=False) == "f2fd6b962fcd1c88"  # run.json model_digest
    assert weights_digest(_linear()) == "c8cd07d7e19fa15a"  # aux.json base_model.weights
    assert tensor_digest([torch.arange(6.0).reshape(2, 3) / 3, torch.arange(5)]) == "d535cbe7eb8edc20"
    assert json_digest({"b": [1, 2], "a": None, "p": Path("/x")}) == "ad81b8580850ad7b"


def test_a_file_digest_is_that_of_the_files_one_after_the_other(tmp_path):
    (tmp_path / "a").write_bytes(b"run")
    (tmp_path / "b").write_bytes(b"result")
    (tmp_path / "ab").write_bytes(b"runresult")
    assert file_digest(tmp_path / "a", tmp_path / "b") == file_digest(tmp_path / "ab")


def _holder(directory):
    """A process that holds ``directory`` and waits to be killed."""
    import subprocess
    import sys

    code = f"from lit_susc.rundir import hold; import time; hold({str(directory)!r}); print('held', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_directory_another_process_holds_is_refused_naming_it_until_that_process_dies(tmp_path):
    """Oracle: flock's semantics. While a live process holds the directory, holding it is refused
    with its pid; once it is SIGKILLed the kernel lets go, and the directory is ours."""
    import signal

    from lit_susc.rundir import RunDirectoryError, hold, release

    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunDirectoryError, match=rf"is being written by process {proc.pid} on "):
            hold(tmp_path / "run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    hold(tmp_path / "run")
    release(tmp_path / "run")


def test_claim_holds_the_directory_and_finishing_lets_it_go(tmp_path):
    from lit_susc.rundir import _HELD, claim, mark_finished

    run = tmp_path / "run"
    assert claim(run, {"a": 1}, record="run.json", other="another run") == "fresh"
    assert run.resolve() in _HELD and (run / ".lock").exists()
    mark_finished(run, {"done": True})
    assert run.resolve() not in _HELD
