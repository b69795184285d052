"""Every file the project writes and later trusts carries its sha256, checked when it is read
(lit_susc.rundir, Checksums): a corrupt or truncated file is refused with one line naming it and
what to do, and doing that repairs the run.

Oracles: the byte a test flips or the bytes it cuts off (the file must be refused, naming itself);
hashlib's sha256 of the file (the recorded digest); the uncorrupted run (bitwise equal after the
repair), and the mtimes of the files the repair must not touch.
"""

import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch
from linear_gaussian import loss_fn as gaussian_loss
from linear_gaussian import model_at, two_blocks
from safetensors.torch import save_file
from test_cli import fails_with, sample, write_config

from lit_susc import BIFResult, SGLDConfig, SusceptibilityResult, estimate_susceptibilities, read_chi, rundir
from lit_susc.analysis import LeakConfig, run_leak_check
from lit_susc.analysis.leak import _SCRATCH_PREFIX, LEAK_JSON, LEAK_TABLE
from lit_susc.aux import (
    AuxBundle,
    AuxModel,
    AuxModelConfig,
    FeatureConfig,
    PCABasis,
    SplitConfig,
    TargetConfig,
    prepare_fit_data,
)
from lit_susc.aux.bundle import META_FILE, NORMALIZATION_FILE, PCA_FILE, WEIGHTS_FILE
from lit_susc.aux.predict import read_pcs, read_tokens
from lit_susc.cluster.graph import load_graph
from lit_susc.cluster.stage import ClusterConfig, run_cluster_stage
from lit_susc.report.inputs import read_inputs
from lit_susc.rundir import (
    FINISHED_MARKER,
    CorruptFileError,
    RunDirectoryError,
    atomic_path,
    checksum_path,
    claim,
    mark_finished,
    read_json,
    read_parquet,
    read_safetensors,
    read_shards,
    shard_name,
    write_json,
    write_memmap,
    write_parquet,
    write_safetensors,
    write_shard,
)
from lit_susc.tinylm import SUMMARY_FILE, TinyLMConfig, train_tiny_lm
from lit_susc.unit_state import load_unit_tensors

ROOT = Path(__file__).resolve().parent.parent
UNIT = "state/units/00001-chain000"
"""The unit whose state the sampling tests damage: chain 0 of the second component."""


def flip(path: Path, *offsets: int) -> None:
    """Flip one bit of each byte at ``offsets`` (from the end when negative), as a failing disk would."""
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    """Keep the first half of the file, as a copy or a write cut short would."""
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("lit-susc: error:")]
    assert len(lines) == 1, err
    return lines[0]


def mtimes(directory: Path, leave_out: Path | None = None) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in directory.rglob("*")
            if p.is_file() and (leave_out is None or leave_out not in p.parents)}


# ----------------------------------------------------------------------------- a sampling run, end to end


RUN_DATA = {"contexts_per_document": 1}
"""Four observation contexts from four documents, so that an aux fit can split them."""


@pytest.fixture(scope="module")
def finished(tiny_lm_dir, tmp_path_factory):
    """A finished ``run.py sample`` of the tiny LM (5 components x 2 chains, chi in 2 shards) and its result."""
    tmp = tmp_path_factory.mktemp("checksums")
    sample(write_config(tmp / "config.yaml", tiny_lm_dir, tmp / "run", data=RUN_DATA))
    return tmp / "run", SusceptibilityResult.load(tmp / "run")


@pytest.fixture
def copy(finished, tiny_lm_dir, tmp_path):
    """A copy of the finished run (mtimes kept) and the config that reruns it."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    return run_dir, write_config(tmp_path / "config.yaml", tiny_lm_dir, run_dir, data=RUN_DATA)


def assert_same_result(run_dir: Path, expected: SusceptibilityResult) -> None:
    result = SusceptibilityResult.load(run_dir)
    assert torch.equal(result.chi, expected.chi) and torch.equal(result.chi_se, expected.chi_se)
    assert result.llc == expected.llc


def test_the_issues_corrupt_unit_state_is_refused_then_recomputed_alone_once_deleted(copy, finished, capsys):
    """Issue 14's scenario: bytes flipped near the end of a unit's susceptibility state, summary.json
    deleted, the same command rerun. It is refused (one line, exit 2) naming the file and the remedy;
    following the remedy samples that unit alone and gives the uncorrupted run's results bitwise."""
    run_dir, config = copy
    unit, state = run_dir / UNIT, run_dir / UNIT / "susceptibility.safetensors"
    flip(state, -5, -20)
    (run_dir / FINISHED_MARKER).unlink()
    line = error_line(fails_with(config, capsys, f"{state} is corrupt"))
    assert f"delete {unit} and rerun the same command: only that unit is sampled again" in line
    assert not (run_dir / FINISHED_MARKER).exists()

    others = mtimes(run_dir / "state", leave_out=unit)
    shutil.rmtree(unit)
    sample(config)
    assert_same_result(run_dir, finished[1])
    assert mtimes(run_dir / "state", leave_out=unit) == others  # no other unit was sampled again
    assert (unit / "done.json").exists()


def test_a_truncated_unit_state_without_a_checksum_is_refused_naming_it(copy, capsys):
    """A state file from before checksums (no sidecar) cut in half: safetensors cannot parse it, and
    the error names the file and the remedy instead of a bare SafetensorError."""
    run_dir, config = copy
    state = run_dir / UNIT / "llc.safetensors"
    checksum_path(state).unlink()
    truncate(state)
    (run_dir / FINISHED_MARKER).unlink()
    line = error_line(fails_with(config, capsys, f"{state} is corrupt: it cannot be read (SafetensorError"))
    assert f"delete {run_dir / UNIT} and rerun the same command" in line


def test_a_corrupt_chi_shard_is_refused_and_written_again_from_the_units(copy, finished, capsys):
    """A flipped bit in chi's second shard: every reader of that shard refuses naming it (a range
    inside the first shard still reads); the remedy rewrites the outputs from the units' state,
    sampling none again."""
    run_dir, config = copy
    shard = run_dir / "chi" / "shard-00001.safetensors"
    flip(shard, -3)
    for read in (lambda: read_chi(run_dir), lambda: read_chi(run_dir, 45, 50), lambda: SusceptibilityResult.load(run_dir)):
        with pytest.raises(CorruptFileError, match=re.escape(f"{shard} is corrupt")) as refused:
            read()
    assert f"delete {run_dir / FINISHED_MARKER} and rerun the command that wrote {run_dir}" in str(refused.value)
    assert torch.equal(read_chi(run_dir, 0, 40), finished[1].chi.reshape(5, -1)[:, :40])

    units = mtimes(run_dir / "state")
    (run_dir / FINISHED_MARKER).unlink()
    sample(config)
    assert_same_result(run_dir, finished[1])
    assert mtimes(run_dir / "state") == units


# ----------------------------------------------------------------------------- aux prediction, cluster stage


def _prediction(directory: Path) -> Path:
    """A finished prediction in aux predict's layout: 10 tokens in shards of 6 and 4, each shard's
    chi, PCs and token table, and the index in result.json."""
    chi, pcs = torch.randn(3, 10), torch.randn(2, 10)
    tokens = pa.table({"token": [f"t{i}" for i in range(10)], "context": np.arange(10) // 5})
    index = {"shards": [], "pcs": {"n_pcs": 2, "shards": []}, "tokens": []}
    for i, (a, b) in enumerate([(0, 6), (6, 10)]):
        index["shards"].append({"file": write_shard(directory, "chi", i, chi[:, a:b]), "start": a, "stop": b})
        index["pcs"]["shards"].append({"file": write_shard(directory, "pcs", i, pcs[:, a:b]), "start": a, "stop": b})
        write_parquet(directory / shard_name("tokens", i, ".parquet"), tokens.slice(a, b - a))
        index["tokens"].append({"file": shard_name("tokens", i, ".parquet"), "start": a, "stop": b})
    write_json(directory / "result.json", {"source": "aux", "components": ["a", "b", "c"], "n_tokens": 10, **index})
    mark_finished(directory, {"tokens": 10})
    return directory


@pytest.mark.parametrize("file, read", [("pcs/shard-00001.safetensors", read_pcs),
                                        ("chi/shard-00001.safetensors", read_chi),
                                        ("tokens/shard-00001.parquet", read_tokens)])
def test_a_corrupt_prediction_shard_is_refused_and_only_it_is_to_be_predicted_again(tmp_path, file, read):
    """The remedy deletes that shard's token table, the marker a resumed prediction looks for."""
    directory = _prediction(tmp_path / "pred")
    read(directory)
    flip(directory / file, -2)
    with pytest.raises(CorruptFileError, match=re.escape(f"{directory / file} is corrupt")) as refused:
        read(directory)
    assert (f"delete {directory / 'tokens/shard-00001.parquet'}, {directory / FINISHED_MARKER} and rerun the command "
            f"that wrote {directory}: only that shard is predicted again") in str(refused.value)


@pytest.fixture
def clustered(tmp_path):
    """The cluster stage on 60 tokens of 3 components (a sampling run's layout, token columns included)."""
    rng = np.random.default_rng(0)
    tokens = pa.table({"token": [f"t{i % 7}" for i in range(60)], "context": np.arange(60) // 15,
                       "offset": np.arange(60) % 15})
    SusceptibilityResult(chi=torch.as_tensor(rng.standard_normal((3, 60))), components=["a", "b", "c"],
                         convention="seed", nbeta=10.0, tokens=tokens).save(tmp_path / "run")
    config = ClusterConfig(input_dir=str(tmp_path / "run"), k=8, min_size=5, alpha=1e-2, eps=1e-5, accelerator="cpu")
    return tmp_path / "run", run_cluster_stage(config, progress=False)


def test_the_graph_carries_its_sha256_and_a_flipped_byte_in_it_is_refused(clustered):
    graph = clustered[1] / "graph" / "data.npy"
    assert checksum_path(graph).read_text() == f"{hashlib.sha256(graph.read_bytes()).hexdigest()}  data.npy\n"
    load_graph(graph.parent)
    flip(graph, graph.stat().st_size - 2)
    with pytest.raises(CorruptFileError, match=re.escape(f"{graph} is corrupt: its bytes differ") + ".*; remedy$"):
        load_graph(graph.parent, "remedy")


def test_the_report_refuses_corrupt_cluster_labels_naming_them(clustered):
    run_dir, out = clustered
    read_inputs(out, run_dir)
    flip(out / "labels.parquet", 100)
    with pytest.raises(CorruptFileError, match=re.escape(f"{out / 'labels.parquet'} is corrupt")) as refused:
        read_inputs(out, run_dir)
    assert f"delete {out / FINISHED_MARKER} and rerun the command that wrote {out}" in str(refused.value)


def test_a_reused_tiny_lm_is_checked_against_the_digests_its_summary_records(tiny_lm_dir, tmp_path):
    """The model stage reuses a finished tiny LM only while its files match train_summary.json's sha256."""
    out_dir = tmp_path / "tiny_lm"
    shutil.copytree(tiny_lm_dir.parent, out_dir)
    recipe = read_json(out_dir / SUMMARY_FILE, "")["config"]
    config = TinyLMConfig(**recipe)

    def reuse():
        return train_tiny_lm(out_dir, config, progress=False, max_documents=30)

    assert reuse() == out_dir / "model"
    flip(out_dir / "model" / "model.safetensors", -7)
    with pytest.raises(CorruptFileError, match=re.escape(f"{out_dir / 'model' / 'model.safetensors'} is missing or "
                                                         "corrupt") + ".*" + re.escape(f"delete {out_dir} and rerun")):
        reuse()


# ----------------------------------------------------------------------------- lit_susc.rundir


WRITERS = {
    "json": (lambda p: write_json(p, {"chi": [1.5, 2.5]}), lambda p: read_json(p, "remedy")),
    "parquet": (lambda p: write_parquet(p, pa.table({"x": np.arange(50)})), lambda p: read_parquet(p, "remedy")),
    "safetensors": (lambda p: write_safetensors(p, {"chi": torch.arange(50.0)}), lambda p: read_safetensors(p, "remedy")),
}


def _memmap(path: Path) -> None:
    with write_memmap(path, np.float32, (10, 5)) as out:
        out[:] = 1.0


def _npz(path: Path) -> None:
    with atomic_path(path, suffix=".npz", checksum=True) as tmp:
        sp.save_npz(tmp, sp.eye(5, format="csr"))


@pytest.mark.parametrize("name, write", [*((n, w) for n, (w, _) in WRITERS.items()), ("npy", _memmap), ("npz", _npz)])
def test_every_writer_records_the_files_sha256_beside_it_in_sha256sums_format(tmp_path, name, write):
    path = tmp_path / f"out.{name}"
    write(path)
    assert checksum_path(path) == tmp_path / f"out.{name}.sha256"
    assert checksum_path(path).read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  out.{name}\n"
    assert rundir.verify(path, "remedy") == path


@pytest.mark.parametrize("name", WRITERS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_bit_anywhere_is_refused_naming_the_file_and_ending_in_the_remedy(tmp_path, name, where):
    write, read = WRITERS[name]
    path = tmp_path / f"out.{name}"
    write(path)
    read(path)
    flip(path, {"first": 0, "middle": path.stat().st_size // 2, "last": -1}[where])
    with pytest.raises(CorruptFileError, match="^" + re.escape(f"{path} is corrupt: its bytes differ from the sha256 "
                                                               f"recorded when it was written (out.{name}.sha256); "
                                                               "remedy") + "$"):
        read(path)


@pytest.mark.parametrize("name", WRITERS)
def test_a_truncated_file_is_refused_with_or_without_its_checksum(tmp_path, name):
    write, read = WRITERS[name]
    path = tmp_path / f"out.{name}"
    write(path)
    truncate(path)
    with pytest.raises(CorruptFileError, match="^" + re.escape(f"{path} is corrupt: its bytes differ")):
        read(path)
    checksum_path(path).unlink()  # as written before checksums: only the parser can tell
    with pytest.raises(CorruptFileError, match="^" + re.escape(f"{path} is corrupt: it cannot be read (") + ".*; remedy$"):
        read(path)


def test_a_file_written_before_checksums_is_read_unchecked(tmp_path):
    """A finished run directory from an older version stays readable: its files have no sidecar."""
    save_file({"sum_phi": torch.tensor(2.0, dtype=torch.float64)}, str(tmp_path / "llc.safetensors"))
    assert float(load_unit_tensors(tmp_path, "llc")["sum_phi"]) == 2.0


def test_a_rewrite_never_leaves_the_previous_versions_checksum_beside_the_file(tmp_path, monkeypatch):
    """A writer killed after its rename, before its sidecar, leaves the new file unchecked, not refused."""
    path = tmp_path / "result.json"
    write_json(path, {"version": 1})
    write_json(path, {"version": 2})
    assert read_json(path, "remedy") == {"version": 2}

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "_write_checksum", killed)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"version": 3})
    assert read_json(path, "remedy") == {"version": 3} and not checksum_path(path).exists()


def test_a_large_shard_read_in_chunks_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    """Oracle: a count of the hashing calls (every file counts as large here)."""
    calls = []
    monkeypatch.setattr(rundir, "_CACHE_BYTES", 0)
    monkeypatch.setattr(rundir, "sha256_of", lambda path, _hash=rundir.sha256_of: calls.append(path) or _hash(path))
    values = torch.arange(40.0).reshape(2, 20)
    shards = [{"start": 0, "stop": 20, "file": write_shard(tmp_path, "chi", 0, values)}]
    calls.clear()
    chunks = [read_shards(tmp_path, shards, "chi", a, a + 5, rows=2, dtype=torch.float32) for a in range(0, 20, 5)]
    assert torch.equal(torch.cat(chunks, dim=1), values) and len(calls) == 1
    calls.clear()
    write_shard(tmp_path, "chi", 0, values + 1)
    assert torch.equal(read_shards(tmp_path, shards, "chi", rows=2, dtype=torch.float32), values + 1)
    assert len(calls) == 2  # the write hashed it, the next read verified it again


def test_a_checksum_left_by_a_deleted_file_is_no_foreign_entry(tmp_path):
    """Deleting a marker, as a remedy says, leaves its sidecar; the directory is still the stage's."""
    write_json(tmp_path / "out" / "summary.json", {})
    (tmp_path / "out" / "summary.json").unlink()
    assert claim(tmp_path / "out", {"k": 1}, record="config.json", other="x", resumable=False, known=()) == "fresh"


def test_compare_runs_leaves_the_checksums_out(tmp_path):
    """A run from before checksums compares identical with the same run written with them."""
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "benchmarks" / "compare_runs.py")
    compare_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_runs)
    write_safetensors(tmp_path / "after" / "chi" / "shard-00000.safetensors", {"chi": torch.ones(2, 3)})
    write_json(tmp_path / "after" / "result.json", {"n_tokens": 3})
    shutil.copytree(tmp_path / "after", tmp_path / "before", ignore=shutil.ignore_patterns("*.sha256"))
    assert compare_runs.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 0


# ----------------------------------------------------------------------------- the readers of every stage


def _aux_bundle(directory: Path) -> Path:
    """A finished aux fit in bundle.py's layout: 6 features, 2 PCs of 3 components."""
    pca = PCABasis(mean=torch.randn(3, dtype=torch.float64), scale=torch.ones(3, dtype=torch.float64),
                   components=torch.linalg.qr(torch.randn(3, 2, dtype=torch.float64))[0].T.contiguous(),
                   variances=torch.tensor([2.0, 1.0], dtype=torch.float64))
    meta = {"n_features": 6, "n_pcs": 2, "config": {"model": asdict(AuxModelConfig())}}
    AuxBundle(model=AuxModel(6, 2, AuxModelConfig()), pca=pca, feature_mean=torch.zeros(6, dtype=torch.float64),
              feature_std=torch.ones(6, dtype=torch.float64), target_scale=torch.ones(2, dtype=torch.float64),
              meta=meta).save(directory, {"n_pcs": 2})
    return directory


@pytest.mark.parametrize("file", [META_FILE, WEIGHTS_FILE, NORMALIZATION_FILE, PCA_FILE])
def test_a_corrupt_file_of_an_aux_model_is_refused_naming_it(tmp_path, file):
    directory = _aux_bundle(tmp_path / "aux")
    AuxBundle.load(directory)
    flip(directory / file, -2)
    with pytest.raises(CorruptFileError, match=re.escape(f"{directory / file} is corrupt")) as refused:
        AuxBundle.load(directory)
    assert f"delete {directory / FINISHED_MARKER} and rerun the command that wrote {directory}" in str(refused.value)


@pytest.mark.parametrize("file", ["bif.safetensors", "bif.json", "train.parquet", "query.parquet"])
def test_a_corrupt_file_of_a_bif_run_is_refused_naming_it(tmp_path, file):
    directory = tmp_path / "bif"
    BIFResult(bif=torch.randn(1, 4, 3, dtype=torch.float64), components=["a"], granularity="sample",
              train=pa.table({"index": np.arange(4)}), query=pa.table({"index": np.arange(3)})).save(directory)
    BIFResult.load(directory)
    flip(directory / file, -2)
    with pytest.raises(CorruptFileError, match=re.escape(f"{directory / file} is corrupt")) as refused:
        BIFResult.load(directory)
    assert f"delete {directory / FINISHED_MARKER} and rerun the command that wrote {directory}" in str(refused.value)


GAUSSIAN_SGLD = {"lr": 5e-5, "nbeta": 1000.0, "localization": 100.0, "chains": 2, "draws": 8, "seed": 0,
                 "burn_in": "auto", "pilot_steps": 40, "steps_between_draws": 2, "target_reliability": 0.999,
                 "max_draws": 16}
"""A pilot chain per component (burn_in 'auto') and two rounds (an unreachable target)."""


def _gaussian_run(run_dir: Path) -> SusceptibilityResult:
    X, y, theta, *_, components = two_blocks()
    return estimate_susceptibilities(model_at(theta), gaussian_loss, [(X, y)], [(X, y)], components=components,
                                     sgld=SGLDConfig(**GAUSSIAN_SGLD), run_dir=run_dir,
                                     trainer={"accelerator": "cpu", "enable_progress_bar": False})


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory):
    """A finished linear-Gaussian run with pilot plans and round decisions, and its result."""
    run_dir = tmp_path_factory.mktemp("gaussian") / "run"
    return run_dir, _gaussian_run(run_dir)


@pytest.fixture
def gaussian_copy(gaussian, tmp_path):
    """A copy of the Gaussian run, unfinished again (its marker deleted): a rerun reads its state."""
    run_dir = tmp_path / "run"
    shutil.copytree(gaussian[0], run_dir)
    (run_dir / FINISHED_MARKER).unlink()
    return run_dir


def _remedy_paths(err: CorruptFileError) -> list[str]:
    """The paths the remedy says to delete."""
    return re.search(r"; delete (.*) and rerun ", str(err)).group(1).replace(" and ", ", ").split(", ")


def test_a_corrupt_round_decision_is_refused_and_decided_again_from_the_same_units(gaussian, gaussian_copy, one_thread):
    run_dir = gaussian_copy
    decision = run_dir / "state" / "rounds" / "round-000.json"
    flip(decision, 3)
    with pytest.raises(CorruptFileError, match=re.escape(f"{decision} is corrupt")) as refused:
        _gaussian_run(run_dir)
    assert _remedy_paths(refused.value) == [str(decision)]
    units = mtimes(run_dir / "state" / "units")
    decision.unlink()
    assert torch.equal(_gaussian_run(run_dir).chi, gaussian[1].chi)
    assert mtimes(run_dir / "state" / "units") == units  # no unit was sampled again
    assert read_json(decision, "") == read_json(gaussian[0] / "state" / "rounds" / "round-000.json", "")


def test_a_corrupt_pilot_plan_is_refused_and_its_component_sampled_again(gaussian, gaussian_copy, one_thread):
    run_dir = gaussian_copy
    pilot = run_dir / "state" / "pilot" / "00001.json"
    flip(pilot, -3)
    with pytest.raises(CorruptFileError, match=re.escape(f"{pilot} is corrupt")) as refused:
        _gaussian_run(run_dir)
    paths = _remedy_paths(refused.value)
    assert paths == [str(pilot), f"{run_dir / 'state' / 'units'}/00001-chain*", str(run_dir / "state" / "rounds")]
    units = run_dir / "state" / "units"
    first = {p: t for p, t in mtimes(units).items() if p.relative_to(units).parts[0].startswith("00000-")}
    pilot.unlink()
    for path in [*units.glob("00001-chain*"), run_dir / "state" / "rounds"]:
        shutil.rmtree(path)
    assert torch.equal(_gaussian_run(run_dir).chi, gaussian[1].chi)
    assert {p: t for p, t in mtimes(units).items() if p in first} == first  # the other component was not sampled
    assert (units / "00001-chain000" / "done.json").exists()


def _prepare(run_dir: Path, cache: Path):
    return prepare_fit_data(run_dir, cache, FeatureConfig(), TargetConfig(n_pcs=2), SplitConfig(val_fraction=0.5))


@pytest.fixture(scope="module")
def fit_cache(finished, tmp_path_factory):
    """The aux fit's feature and target cache of the finished sampling run, and the data prepared from it."""
    cache = tmp_path_factory.mktemp("aux") / "cache"
    made = _prepare(finished[0], cache)
    return cache, np.array(made.features), np.array(made.targets), made


@pytest.mark.parametrize("file", ["features.json", "features.npy", "targets.json", "normalization.safetensors"])
def test_a_corrupt_file_of_the_aux_fit_cache_is_made_again_saying_so(finished, fit_cache, tmp_path, file, capsys):
    """A cache only saves time: a corrupt file of it is computed again, never used, and a line names it."""
    cache, features, targets, made = fit_cache
    cache = shutil.copytree(cache, tmp_path / "cache")
    flip(cache / file, -1)
    capsys.readouterr()
    again = _prepare(finished[0], cache)
    assert f"lit-susc: {cache / file} is corrupt: its bytes differ" in capsys.readouterr().out
    assert np.array_equal(again.features, features) and np.array_equal(again.targets, targets)
    assert torch.equal(again.pca.components, made.pca.components) and torch.equal(again.feature_std, made.feature_std)
    rundir.verify(cache / file, "remedy")  # written again


def test_a_corrupt_run_json_is_refused_by_aux_fit_naming_it(copy, tmp_path):
    run_dir, _ = copy
    flip(run_dir / "run.json", 10)
    with pytest.raises(CorruptFileError, match=re.escape(f"{run_dir / 'run.json'} is corrupt")) as refused:
        prepare_fit_data(run_dir, tmp_path / "cache", FeatureConfig(), TargetConfig(), SplitConfig())
    assert f"delete {run_dir} and rerun the command that wrote it" in str(refused.value)


def _finished_leak_check(out: Path) -> LeakConfig:
    """A finished leak check's table and marker in ``out`` (for sample and aux directories that a
    finished check does not read again)."""
    config = LeakConfig()
    write_parquet(out / LEAK_TABLE, pa.table({"layer": [0, 1], "cka_aux": [0.5, 0.25]}))
    mark_finished(out, {"config": asdict(config), "sample_dir": "run", "aux_dir": "aux"}, marker=LEAK_JSON)
    return config


def test_a_finished_leak_checks_corrupt_table_is_refused_naming_it(tmp_path):
    out = tmp_path / "leak"
    config = _finished_leak_check(out)
    assert run_leak_check("run", "aux", out, config).num_rows == 2
    flip(out / LEAK_TABLE, 8)
    with pytest.raises(CorruptFileError, match=re.escape(f"{out / LEAK_TABLE} is corrupt")) as refused:
        run_leak_check("run", "aux", out, config)
    assert f"delete {out / LEAK_JSON} and rerun the command that wrote {out}" in str(refused.value)


def test_a_killed_leak_checks_scratch_is_removed_when_the_next_check_starts(tmp_path):
    """kill -9 skips the TemporaryDirectory's removal; the next check of that directory removes it
    (and here stops at its missing aux model)."""
    out = tmp_path / "leak"
    stale = out / f"{_SCRATCH_PREFIX}abc123"
    stale.mkdir(parents=True)
    (stale / "activations.npy").write_bytes(b"\0" * 64)
    with pytest.raises(FileNotFoundError, match="holds no finished aux model"):
        run_leak_check(tmp_path / "run", tmp_path / "aux", out, LeakConfig())
    rundir.release(out)
    assert not stale.exists() and out.is_dir()


def test_a_running_leak_checks_scratch_is_left_alone(tmp_path):
    """A check that holds the directory's lock is running: the next one is refused and removes nothing."""
    out = tmp_path / "leak"
    scratch = out / f"{_SCRATCH_PREFIX}abc123"
    scratch.mkdir(parents=True)
    fd = os.open(out / rundir.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's lock, as far as flock can tell
        with pytest.raises(RunDirectoryError, match="is being written by"):
            run_leak_check(tmp_path / "run", tmp_path / "aux", out, LeakConfig())
    finally:
        os.close(fd)
    assert scratch.is_dir()
