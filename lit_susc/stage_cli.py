"""The settings of every stage as its command parses them, and the pipeline's check of a section.

``cluster``, ``analyse`` and ``report`` take one dataclass of settings (``parse_settings``: a
``--config`` file and one option per field). ``sample``, ``aux fit`` and ``aux predict`` are
LightningCLIs (lit_susc.cli, lit_susc.aux.cli) whose settings are a ``trainer:`` section and the
typed arguments of the function that builds the stage. ``check_section`` parses a pipeline
section with the same types, and builds its dataclasses (so their own checks run), without
loading a model or running anything: a typo in ``cluster:`` is found before the first stage starts.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

Settings = TypeVar("Settings")


def settings_parser(settings: type, prog: str, description: str | None) -> ArgumentParser:
    """``--config FILE`` and one option per field of the dataclass ``settings``; a bad value raises
    ArgumentError (``exit_on_error=False``) instead of printing the usage."""
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of the fields below")
    parser.add_class_arguments(settings)
    return parser


def parse_settings(settings: type[Settings], argv: list[str] | None, prog: str, description: str | None) -> Settings:
    """The dataclass ``settings`` from the command line (its ``__post_init__`` checks run); a ValueError
    of one line (``explain``) when the command line or a config file is wrong."""
    argv = sys.argv[1:] if argv is None else argv
    check_config_files(argv)
    try:
        cfg = settings_parser(settings, prog, description).parse_args(argv)
    except ArgumentError as err:
        raise ValueError(explain(err)) from err
    return settings(**{f.name: cfg[f.name] for f in fields(settings)})


def read_yaml(path: str | Path) -> Any:
    """The YAML file ``path``; a ValueError naming the file, line and column when it is not valid YAML."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from err


def read_runner_yaml(path: str | Path, what: str, sections: Sequence[str], mappings: Sequence[str],
                     default_output_dir: str) -> dict[str, Any]:
    """The YAML of a command that runs several stages (``what``: 'pipeline', 'develop'), checked: the
    file exists and holds a mapping of the known ``sections``, ``mappings`` among them are mappings
    (or empty), and ``output_dir`` is a directory path that is not a file. ValueError (or
    FileNotFoundError) naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} config {path} does not exist")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    output_dir = raw.setdefault("output_dir", default_output_dir)
    if not isinstance(output_dir, str) or not output_dir:
        raise ValueError(f"{path}: output_dir must be a directory path, got {output_dir!r}")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"{path}: output_dir {output_dir} is a file, not a directory; choose another output_dir")
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {', '.join(unknown)}; a {what} config has {', '.join(sections)}")
    for name in mappings:
        if not isinstance(raw.get(name) or {}, dict):
            raise ValueError(f"{path}: section {name!r} must be a mapping")
    return raw


def check_config_files(argv: Sequence[str]) -> None:
    """``read_yaml`` every ``--config`` (LightningCLI: ``-c``) file of ``argv``: jsonargparse reports a YAML error
    with neither the file's name nor a line of it (a value that is no file is left to jsonargparse, which
    takes YAML text too)."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            value = arg.removeprefix("--config=")
        else:
            continue
        if Path(value).is_file():
            read_yaml(value)


def _stage_settings(stage: str) -> tuple[type | Callable, str | None, bool]:
    """What a stage's command parses: (dataclass or builder function, the key it sits under, has a trainer)."""
    if stage == "sample":
        from .lm import lm_susceptibilities

        return lm_susceptibilities, "model", True
    if stage == "aux_fit":
        from .aux.fit import fit_aux

        return fit_aux, None, True
    if stage == "aux_predict":
        from .aux.predict import upsample

        return upsample, None, True
    if stage == "cluster":
        from .cluster.stage import ClusterConfig

        return ClusterConfig, None, False
    if stage == "analyse":
        from .analysis.stage import AnalyseConfig

        return AnalyseConfig, None, False
    if stage == "report":
        from .report.stage import ReportStageConfig

        return ReportStageConfig, None, False
    raise ValueError(f"no settings known for stage {stage!r}")


FILLED_IN = {"trainer", "config_text"}
"""Arguments of the stage functions that their command supplies rather than the YAML."""


def check_section(stage: str, section: dict[str, Any]) -> None:
    """Parse ``section`` (the config the stage's command will get) and build its dataclasses; a
    ValueError naming the stage, the key and the reason when anything is wrong."""
    import lightning as L

    settings, key, trainer = _stage_settings(stage)
    parser = ArgumentParser(exit_on_error=False)
    if trainer:
        parser.add_class_arguments(L.Trainer, "trainer", instantiate=False, fail_untyped=False, sub_configs=True)
        parser.add_argument("--seed_everything", type=int | bool | None, default=None)
    if isinstance(settings, type):
        parser.add_class_arguments(settings, key)
    else:
        parser.add_function_arguments(settings, key, skip=FILLED_IN)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    try:
        cfg = instantiate(parser.parse_object(section))
        if isinstance(settings, type) and key is None:  # fields at the top level: built as parse_settings does
            settings(**{f.name: cfg[f.name] for f in fields(settings)})
    except Exception as err:  # jsonargparse reports a failed dataclass check as whatever it raised
        raise ValueError(f"the {stage} section: {explain(err)}") from err


_PARSER_KEY = re.compile(r'Parser key "([^"]*)":\s*(.*)')
"""jsonargparse's 'Parser key "model.data":' line, with the reason after it when it fits on the line."""


def explain(err: Exception) -> str:
    """The reason in a jsonargparse error, without its header: a value that fits neither of ``X | None``
    is reported as "Does not validate against any of the Union subtypes", the real reason several
    lines down, among the subtypes' errors."""
    lines = []  # each 'Parser key "k":' as "Parser key k", and a reason after it on the same line as a line of its own
    for line in (line.strip() for line in str(err).splitlines()):
        if parser_key := _PARSER_KEY.match(line):
            lines.append(f"Parser key {parser_key[1]}")
            line = parser_key[2]
        if line:
            lines.append(line)
    key = next((line.removeprefix("Parser key ") for line in lines if line.startswith("Parser key")), None)
    if "Errors:" in lines:
        errors = lines[lines.index("Errors:") + 1:]
        errors = errors[:next((i for i, line in enumerate(errors) if line.startswith("Given value")), len(errors))]
        errors = [line.removeprefix("- ") for line in errors if not line.startswith(("- Expected a <class 'NoneType'>",
                                                                                     "- Problem with given class_path"))]
    else:
        errors = lines[1:] if key else lines
    reasons, inner = [], None  # a nested "Parser key" names the field of the reason that follows it
    for line in errors:
        if line.startswith("Parser key"):
            inner = line.removeprefix("Parser key ")
        else:
            reasons.append(f"{inner}: {line}" if inner else line)
            inner = None
    return (f"{key}: " if key else "") + "; ".join(reasons or [type(err).__name__])
