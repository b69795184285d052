"""Every shipped config parses: each stage's section through that stage's own parser (--print_config)."""

from pathlib import Path

import pytest
import yaml

import run
from lit_susc.develop import Develop, DevelopConfig
from lit_susc.pipeline import Pipeline, PipelineConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
PREFIXES = {"bif_": ["bif"], "calibrate_": ["calibrate"], "aux_fit_": ["aux", "fit"], "aux_predict_": ["aux", "predict"]}


def command_of(path: Path) -> list[str]:
    return next((command for prefix, command in PREFIXES.items() if path.name.startswith(prefix)), ["sample"])


def printed_config(command: list[str], path: Path, capsys) -> dict:
    """What ``run.py <command> --config path --print_config`` prints, parsed (it exits 0)."""
    with pytest.raises(SystemExit) as exit_info:
        run.main([*command, "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def is_develop(path: Path) -> bool:
    return path.name.startswith("develop_")


def is_pipeline(path: Path) -> bool:
    return "sample" in (yaml.safe_load(path.read_text()) or {}) and not is_develop(path)


def test_the_configs_named_in_the_readme_and_issues_exist():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "qwen2.5-0.5b.yaml", "pipeline_qwen2.5-0.5b.yaml", "olmo2-1b.yaml", "pythia-14m.yaml",
            "pythia-70m.yaml", "gpt2.yaml", "develop_quickstart.yaml", "develop_pythia-160m.yaml"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIGS if not is_pipeline(p) and not is_develop(p)], ids=lambda p: p.name)
def test_a_stage_config_parses_with_its_command(path, capsys):
    """Oracle: the stage's parser echoes the file's own values."""
    printed = printed_config(command_of(path), path, capsys)
    written = yaml.safe_load(path.read_text())
    if "model" in written and "pretrained" in written["model"]:
        assert printed["model"]["pretrained"] == written["model"]["pretrained"]
        assert printed["model"]["revision"] == written["model"].get("revision")


@pytest.mark.parametrize("path", [p for p in CONFIGS if is_pipeline(p)], ids=lambda p: p.name)
def test_every_section_of_a_pipeline_config_parses_with_its_stage_command(path, tmp_path, capsys):
    pipeline = Pipeline(PipelineConfig.from_yaml(path))
    run.main(["pipeline", "--config", str(path), "--print_config"])
    assert "# sample: run.py sample --config" in capsys.readouterr().out
    for stage in pipeline.stages:
        if stage == "model":
            continue
        stage_file = tmp_path / f"{stage}.yaml"
        stage_file.write_text(yaml.safe_dump(pipeline.stage_config(stage)))
        printed_config(pipeline.command(stage), stage_file, capsys)



@pytest.mark.parametrize("path", [p for p in CONFIGS if is_develop(p)], ids=lambda p: p.name)
def test_every_checkpoint_of_a_develop_config_parses_with_the_sample_command(path, tmp_path, capsys):
    develop = Develop(DevelopConfig.from_yaml(path))
    run.main(["develop", "--config", str(path), "--print_config"])
    assert capsys.readouterr().out.count("run.py sample --config") == len(develop.checkpoints)
    for checkpoint in develop.checkpoints:
        stage_file = tmp_path / f"{checkpoint.name}.yaml"
        stage_file.write_text(yaml.safe_dump(develop.sample_config(checkpoint)))
        printed = printed_config(["sample"], stage_file, capsys)
        assert printed["model"]["revision"] == checkpoint.revision
