"""``python run.py develop --config configs/develop_quickstart.yaml``: a training history, one command.

The YAML holds ``output_dir``, ``threads``, ``wandb`` (as the pipeline's), ``sample:`` (exactly what
``run.py sample`` takes: ``trainer`` and ``model``), the ``checkpoints`` and, optionally,
``calibrate:``. Every checkpoint is sampled with the same components, observation tokens,
reference batch, SGLD settings and seeds; only the weights differ. The checkpoints are

- hub revisions of one model: ``sample.model.pretrained: EleutherAI/pythia-160m`` and
  ``checkpoints: [{step: 1000, revision: step1000}, ...]`` (Pythia and OLMo 2 publish them);
- local model directories: ``checkpoints: [{step: 1000, pretrained: path/to/step1000}, ...]``;
- or, offline, the tiny LM's own: ``sample.model.pretrained: null`` with
  ``sample.model.tiny_lm.checkpoints: [0, 30, 100, 300]`` and ``checkpoints: null``; the model is
  trained first (``<output_dir>/model/``) and saved at those steps (0: at initialisation).

Writes, under ``output_dir``::

    model/                       the tiny LM and its checkpoints (offline only)
    checkpoints/step<N>/         one sample run per checkpoint (``run.py sample``; resumable)
    calibration/step<N>/         its calibration (``run.py calibrate``), with ``calibrate:``
    develop/step<N>.yaml, .json  the config each checkpoint's sample run got, and its state
    development/                 the comparison (lit_susc.development): components.parquet (LLC with
                                 its spread over chains, reliability), changes.parquet, joint_pca,
                                 trajectories.parquet, the plots, index.html, summary.json (last)

Each checkpoint's sample run is a process of its own (lit_susc.stage_process), so its ``trainer``
may ask for several devices: its chains are split across the DDP ranks as in ``run.py sample``. A
finished checkpoint with the same config is skipped; an interrupted one resumes where it stopped
(kill -9 included). A checkpoint that is missing, or has another architecture than the first, is
an error before anything runs.

**Settings.** By default every checkpoint samples with ``sample.model.sgld``, and the run says so.
With ``calibrate:`` (``grid``, ``rule`` and ``model`` overrides, as ``run.py calibrate`` takes
them), each checkpoint is calibrated first and sampled with the lr, nbeta and localization its
calibration recommends; the choice is recorded in ``develop/step<N>.json`` and the summary.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .corpus import looks_like_path
from .development import VERSION as DEVELOPMENT_VERSION
from .development import Development, development
from .pipeline import WandbConfig
from .result import SusceptibilityResult
from .rundir import hold, is_finished, json_digest, mark_unfinished, read_json, read_summary, stage_remedy, write_json
from .stage_process import check_threads, in_process_threads, run_stage_process, stage_environment
from .tinylm import TinyLMConfig, checkpoint_dir, train_tiny_lm

SGLD_CALIBRATED = ("lr", "nbeta", "localization")
"""The sgld fields a per-checkpoint calibration chooses."""


@dataclass
class Checkpoint:
    """One point of the training history."""

    step: int
    """Its training step: the x axis of every curve."""
    revision: str | None = None
    """A hub revision of ``sample.model.pretrained`` (Pythia's ``step1000``, OLMo 2's ``stage1-step...``)."""
    pretrained: str | None = None
    """A local model directory or another hub name; None: ``sample.model.pretrained`` (at ``revision``)."""

    @property
    def name(self) -> str:
        """Its directories' name: ``step`` and the step, zero-padded so that names sort as steps do."""
        return f"step{self.step:08d}"


@dataclass
class DevelopConfig:
    """One YAML for a developmental study (module docstring)."""

    output_dir: str = "runs/develop"
    """Where everything goes."""
    threads: int | Literal["auto"] | None = "auto"
    """CPU threads of each checkpoint's process, as the pipeline's ``threads`` ('auto': 1 on a small machine)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    checkpoints: list[Checkpoint] | None = None
    """The training history, in any order (sorted by step); None: the tiny LM's ``tiny_lm.checkpoints``."""
    sample: dict = field(default_factory=dict)
    """The ``run.py sample`` config: ``trainer`` and ``model`` (model.pretrained, revision and output_dir
    are filled in per checkpoint)."""
    calibrate: dict | None = None
    """``grid``, ``rule`` and optional ``model``/``trainer`` overrides of ``run.py calibrate``, run per
    checkpoint; None: every checkpoint samples with ``sample.model.sgld``."""
    n_pcs: int = 8
    """PCs kept of the joint PCA of every checkpoint's per-token susceptibility vectors."""
    trajectory_tokens: int = 300
    """Tokens whose trajectories through the joint PCA are drawn (a random subset; all are saved)."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> DevelopConfig:
        from .stage_cli import read_runner_yaml

        raw = read_runner_yaml(path, "develop", list(cls.__dataclass_fields__), ("sample", "calibrate"),
                               cls.output_dir)
        checkpoints = raw.get("checkpoints")
        if checkpoints is not None:
            if not isinstance(checkpoints, list) or not all(isinstance(c, dict) for c in checkpoints):
                raise ValueError(f"{path}: checkpoints must be a list of {{step, revision, pretrained}} mappings "
                                 "(or null for the tiny LM's)")
            try:
                checkpoints = [Checkpoint(**c) for c in checkpoints]
            except TypeError as err:
                raise ValueError(f"{path}: a checkpoint: {err}; a checkpoint has step, revision, pretrained") from err
        for name in ("n_pcs", "trajectory_tokens"):
            value = raw.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{path}: {name} must be a whole number >= 1, got {value!r}")
        return cls(output_dir=raw["output_dir"], threads=check_threads(str(path), raw.get("threads", "auto")),
                   wandb=WandbConfig.from_section(str(path), raw.get("wandb")), checkpoints=checkpoints,
                   sample=raw.get("sample") or {}, calibrate=raw.get("calibrate"),
                   n_pcs=raw.get("n_pcs", cls.n_pcs), trajectory_tokens=raw.get("trajectory_tokens", cls.trajectory_tokens))


def _merged(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys replacing its own, mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Develop:
    """Plans and runs a developmental study from a DevelopConfig (module docstring)."""

    def __init__(self, config: DevelopConfig) -> None:
        self.config = config
        self.out = Path(config.output_dir).resolve()
        self.state_dir = self.out / "develop"
        self.model = copy.deepcopy(config.sample.get("model") or {})
        self.trains_model = config.checkpoints is None
        self.tiny_lm = TinyLMConfig(**(self.model.get("tiny_lm") or {})) if self.trains_model else None

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """The training history, by step; the tiny LM's saved checkpoints when it is trained here."""
        if self.trains_model:
            return [Checkpoint(step=s, pretrained=str(checkpoint_dir(self.out / "model", s)))
                    for s in sorted(self.tiny_lm.checkpoints)]
        return sorted(self.config.checkpoints, key=lambda c: c.step)

    def run_dir(self, checkpoint: Checkpoint) -> Path:
        return self.out / "checkpoints" / checkpoint.name

    def calibration_dir(self, checkpoint: Checkpoint) -> Path:
        return self.out / "calibration" / checkpoint.name

    # -- configs -----------------------------------------------------------------------------

    def _model_of(self, checkpoint: Checkpoint) -> dict:
        model = {k: v for k, v in self.model.items() if k != "tiny_lm"}
        model["pretrained"] = checkpoint.pretrained or self.model.get("pretrained")
        model["revision"] = checkpoint.revision if checkpoint.pretrained is None else None
        return model

    def sample_config(self, checkpoint: Checkpoint, sgld: dict | None = None) -> dict:
        """The ``run.py sample`` config of ``checkpoint`` (``sgld``: the calibrated lr, nbeta, localization)."""
        config = copy.deepcopy(self.config.sample)
        model = self._model_of(checkpoint)
        model["output_dir"] = str(self.run_dir(checkpoint))
        if sgld:
            model["sgld"] = {**(model.get("sgld") or {}), **sgld}
        config["model"] = model
        if self.config.wandb.enabled:
            config.setdefault("trainer", {})["logger"] = {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": self.config.wandb.run_args(self.out, checkpoint.name, json_digest(config),
                                                        save_dir=self.state_dir)}
        return config

    def calibration_config(self, checkpoint: Checkpoint) -> dict:
        """The ``run.py calibrate`` config of ``checkpoint``: sample's model, calibrate's overrides."""
        cal = self.config.calibrate or {}
        model = _merged({k: v for k, v in self._model_of(checkpoint).items() if k != "shard_tokens"},
                        cal.get("model") or {})
        trainer = _merged({k: v for k, v in (self.config.sample.get("trainer") or {}).items()
                           if k not in ("devices", "strategy", "num_nodes", "logger")}, cal.get("trainer") or {})
        return {"output_dir": str(self.calibration_dir(checkpoint)), "trainer": {**trainer, "devices": 1},
                "model": model, "grid": cal.get("grid") or {}, "rule": cal.get("rule") or {}}

    # -- checks ------------------------------------------------------------------------------

    def check(self, models: bool = True) -> None:
        """Everything that can be found wrong before anything runs (module docstring); ``models``:
        also that each checkpoint exists and has the first one's architecture (from its config.json,
        which a hub revision needs the hub for)."""
        from .stage_cli import check_section

        if not self.config.sample.get("model"):
            raise ValueError("the develop config has no sample.model section: say which model and data to sample")
        if self.trains_model:
            if self.model.get("pretrained") is not None:
                raise ValueError(f"checkpoints is null, which means the tiny LM's, but sample.model.pretrained is "
                                 f"{self.model['pretrained']!r}: list that model's checkpoints (step and revision)")
            if not self.tiny_lm.checkpoints:
                raise ValueError("checkpoints is null and sample.model.tiny_lm.checkpoints is empty: list the steps "
                                 "at which the tiny LM is saved (0: at initialisation), or list checkpoints")
        checkpoints = self.checkpoints
        if not checkpoints:
            raise ValueError("checkpoints is empty: list at least one (step, revision or pretrained)")
        steps = [c.step for c in checkpoints]
        for c in checkpoints:
            if isinstance(c.step, bool) or not isinstance(c.step, int) or c.step < 0:
                raise ValueError(f"a checkpoint's step must be a whole number >= 0, got {c.step!r}")
            if c.pretrained is None and self.model.get("pretrained") is None:
                raise ValueError(f"checkpoint step {c.step} names no model: give it pretrained (a local directory), "
                                 "or set sample.model.pretrained to the model whose revisions these are")
        duplicates = sorted({s for s in steps if steps.count(s) > 1})
        if duplicates:
            raise ValueError(f"checkpoints list step {duplicates[0]} more than once; each step is one checkpoint")
        for c in checkpoints:
            check_section("sample", self.sample_config(c))
            if self.config.calibrate is not None:
                self._check_calibration(c)
        if models and not self.trains_model:
            self._check_architectures(checkpoints)

    def _check_calibration(self, checkpoint: Checkpoint) -> None:
        from .calibration import grid_settings
        from .config import SGLDConfig

        unknown = sorted(set(self.config.calibrate) - {"grid", "rule", "model", "trainer"})
        if unknown:
            raise ValueError(f"the calibrate section: unknown key(s) {', '.join(unknown)}; it has grid, rule, model, "
                             "trainer")
        config = self.calibration_config(checkpoint)
        grid = config["grid"]
        try:
            grid_settings(**{a: grid.get(a) for a in SGLD_CALIBRATED}, sgld=SGLDConfig(**config["model"].get("sgld", {})))
        except TypeError as err:
            raise ValueError(f"the calibrate section: {err}") from err

    def _check_architectures(self, checkpoints: list[Checkpoint]) -> None:
        """Every checkpoint exists (a local path) and has the first one's parameters (names and shapes),
        read from each config alone (no weights)."""
        from .tinylm import load_causal_lm_on_meta

        first = None
        for c in checkpoints:
            model = self._model_of(c)
            name = model["pretrained"]
            if looks_like_path(name) and not Path(name).expanduser().exists():
                raise ValueError(f"checkpoint step {c.step}: no model at {name}; correct its path or remove it")
            meta = load_causal_lm_on_meta(name, revision=model["revision"],
                                          trust_remote_code=bool(model.get("trust_remote_code")))
            shapes = {n: tuple(p.shape) for n, p in meta.named_parameters()}
            if first is None:
                first = (c, shapes)
            elif shapes != first[1]:
                differ = sorted(set(shapes.items()) ^ set(first[1].items()))
                raise ValueError(f"checkpoint step {c.step} ({name}) has another architecture than step "
                                 f"{first[0].step}: parameter {differ[0][0]} differs; every checkpoint must be "
                                 "the same model at another point of its training")

    # -- running -----------------------------------------------------------------------------

    def run(self) -> Development:
        """Train the tiny LM (offline), sample every checkpoint that is not finished, then compare them."""
        self.check()
        hold(self.state_dir)  # two runs into one output_dir would write the same checkpoints
        if self.trains_model:
            print(f"lit-susc develop: the tiny LM, saved at steps {sorted(self.tiny_lm.checkpoints)} -> "
                  f"{self.out / 'model'}", flush=True)
            with in_process_threads(self.config.threads):
                train_tiny_lm(self.out / "model", self.tiny_lm,
                              source=(self.model.get("data") or {}).get("source", "stdlib"))
        sgld = self.model.get("sgld") or {}
        print("lit-susc develop: " + (
            "each checkpoint samples with the lr, nbeta and localization its own calibration recommends "
            f"({self.out / 'calibration'})" if self.config.calibrate is not None else
            "every checkpoint samples with sample.model.sgld: "
            + ", ".join(f"{k}={sgld.get(k, 'default')}" for k in SGLD_CALIBRATED)), flush=True)
        for checkpoint in self.checkpoints:
            self._run_checkpoint(checkpoint)
        return self._compare()

    def _state_file(self, checkpoint: Checkpoint) -> Path:
        return self.state_dir / f"{checkpoint.name}.json"

    def _state(self, checkpoint: Checkpoint) -> dict:
        path = self._state_file(checkpoint)
        return read_json(path, stage_remedy(self.state_dir, delete=[path])) if path.exists() else {}

    def _run_checkpoint(self, checkpoint: Checkpoint) -> None:
        sgld, chosen_by = None, "sample.model.sgld"
        if self.config.calibrate is not None:
            sgld, chosen_by = self._calibrate(checkpoint), f"calibration ({self.calibration_dir(checkpoint)})"
        config = self.sample_config(checkpoint, sgld)
        fingerprint = json_digest(self._without_logger(config))
        run_dir = self.run_dir(checkpoint)
        if self._state(checkpoint).get("fingerprint") == fingerprint and is_finished(run_dir):
            print(f"lit-susc develop: step {checkpoint.step}: finished with the same config, skipped ({run_dir})")
            return
        config_path = self.state_dir / f"{checkpoint.name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        state = {"checkpoint": asdict(checkpoint), "fingerprint": fingerprint, "sgld_chosen_by": chosen_by,
                 "sgld": {k: config["model"].get("sgld", {}).get(k) for k in SGLD_CALIBRATED}}
        write_json(self._state_file(checkpoint), {**state, "finished": False})
        print(f"\nlit-susc develop: step {checkpoint.step}: sampling -> {run_dir}", flush=True)
        run_stage_process(["sample", "--config", str(config_path)], f"the sample run of step {checkpoint.step}",
                          stage_environment(self.config.threads))
        if not is_finished(run_dir):
            raise ValueError(f"the sample run of step {checkpoint.step} exited without finishing {run_dir}; rerun "
                             "the same command to resume it")
        write_json(self._state_file(checkpoint), {**state, "finished": True})

    @staticmethod
    def _without_logger(config: dict) -> dict:
        trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k != "logger"}
        return {**config, "trainer": trainer}

    def _calibrate(self, checkpoint: Checkpoint) -> dict:
        """The lr, nbeta and localization ``checkpoint``'s calibration recommends (run when not finished)."""
        directory = self.calibration_dir(checkpoint)
        config = self.calibration_config(checkpoint)
        config_path = self.state_dir / f"{checkpoint.name}.calibrate.yaml"
        recorded = config_path.read_text() if config_path.exists() else None
        if not (is_finished(directory) and recorded == yaml.safe_dump(config, sort_keys=False)):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            print(f"\nlit-susc develop: step {checkpoint.step}: calibrating -> {directory}", flush=True)
            run_stage_process(["calibrate", "--config", str(config_path)], f"the calibration of step {checkpoint.step}",
                              stage_environment(self.config.threads))
        best = read_summary(directory)["best"]
        if best is None:
            raise ValueError(f"the calibration of step {checkpoint.step} found no qualifying setting "
                             f"({directory / 'calibration.parquet'}); widen calibrate.grid or lengthen its chains")
        return {k: best[k] for k in SGLD_CALIBRATED}

    def _compare(self) -> Development:
        """lit_susc.development over every checkpoint, with its plots and page (skipped when finished)."""
        from .report.development import write_development_page

        checkpoints = self.checkpoints
        out = self.out / "development"
        sources = {c.name: read_summary(self.run_dir(c)) for c in checkpoints}
        fingerprint = json_digest([sources, self.config.n_pcs, self.config.trajectory_tokens, DEVELOPMENT_VERSION])
        if is_finished(out) and read_summary(out).get("fingerprint") == fingerprint:
            print(f"lit-susc develop: {out} already compares these runs; nothing to do")
            return Development.load(out)
        mark_unfinished(out)  # no stale comparison may look finished
        results = [SusceptibilityResult.load(self.run_dir(c)) for c in checkpoints]
        dev = development(results, [c.step for c in checkpoints], n_pcs=self.config.n_pcs,
                          names=[f"step {c.step} ({self.run_dir(c)})" for c in checkpoints])
        page = write_development_page(dev, out, trajectory_tokens=self.config.trajectory_tokens)
        settings = {c.name: self._state(c) for c in checkpoints}
        dev.save(out, {"fingerprint": fingerprint, "checkpoints": settings, "page": str(page)})
        if self.config.wandb.enabled:
            from .tracking import log_development

            log_development(self.config.wandb, self.out, dev, out)
        for note in dev.notes:
            print(f"lit-susc develop: note: {note}")
        print(f"\nlit-susc develop: done. {len(checkpoints)} checkpoints compared in {out}\n"
              f"  open {page.resolve().as_uri()}\n"
              f"  in Python: lit_susc.Development.load(\"{out}\")")
        return dev


def develop_checkpoints(config: DevelopConfig | str | Path) -> Development:
    """``run.py develop`` from Python: ``config`` is a DevelopConfig or the path of its YAML. Returns the
    comparison (``Development``: LLC per component and step, chi's changes, the joint PCA); each
    checkpoint's chi and chi_se are in ``<output_dir>/checkpoints/step<N>/`` (``SusceptibilityResult.load``)."""
    return Develop(config if isinstance(config, DevelopConfig) else DevelopConfig.from_yaml(config)).run()


def main(argv: list[str] | None = None) -> Development | Path:
    """``run.py develop --config FILE [--print_config]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="run.py develop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the develop YAML (see configs/develop_quickstart.yaml)")
    parser.add_argument("--print_config", action="store_true",
                        help="print the sample config of every checkpoint, then exit")
    args = parser.parse_args(argv)
    develop = Develop(DevelopConfig.from_yaml(args.config))
    if args.print_config:
        develop.check(models=False)
        print("---\n".join(f"# step {c.step}: run.py sample --config {develop.state_dir / f'{c.name}.yaml'}\n"
                           + yaml.safe_dump(develop.sample_config(c), sort_keys=False) for c in develop.checkpoints))
        return develop.state_dir
    return develop.run()
