"""``python run.py pipeline --config configs/quickstart.yaml``: every stage, in order, from one file.

    model        train the small offline model (only when ``sample.model.pretrained`` is null)
    sample       ground-truth susceptibilities            (run.py sample)
    aux_fit      the aux model                            (run.py aux fit)
    aux_predict  predicted susceptibilities of >= 4x as many tokens   (run.py aux predict)
    cluster      whitening, k-NN graph, local clusters    (run.py cluster)
    analyse      leak check: CKA and Jaccard-kNN by layer (run.py analyse)
    report       the cluster browser and plots            (run.py report)

The pipeline's YAML holds ``output_dir``, ``wandb`` and one section per stage, each exactly what
that stage's own command takes, minus the directories, which the pipeline fills in: stage ``s``
writes ``<output_dir>/<s>/``. The resolved config of each stage is saved as
``<output_dir>/pipeline/<s>.yaml`` (rerun any stage by hand with it) and its state as
``<output_dir>/pipeline/<s>.json``.

Each stage runs as its own process (so multi-device stages launch their ranks cleanly). A stage
that finished with the same config (its own and every earlier stage's) is skipped; one whose
config changed is recomputed from scratch, and so is every stage after it; ``--from-stage s``
recomputes ``s`` and the stages after it. A stage interrupted part-way resumes where it stopped.
"""

from __future__ import annotations

import copy
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .analysis.leak import LEAK_JSON
from .report.browser import INDEX
from .result import read_metadata
from .rundir import FINISHED_MARKER, hold, is_finished, json_digest, read_json, read_summary, write_json
from .stage_process import StageFailedError, check_threads, in_process_threads, run_stage_process, stage_environment
from .tinylm import SUMMARY_FILE

STAGES = ("model", "sample", "aux_fit", "aux_predict", "cluster", "analyse", "report")
RESULT_FREE_TRAINER_KEYS = frozenset({"enable_progress_bar", "enable_model_summary", "log_every_n_steps"})
"""Trainer settings that change how a stage reports, never what it computes."""
RANK_INVARIANT = frozenset({"sample", "aux_predict"})
"""Stages whose outputs are the same on any number of processes (tested: DDP on 2 ranks equals 1)."""
PROCESS_KEYS = frozenset({"devices", "num_nodes", "strategy"})
MARKERS = {**dict.fromkeys(STAGES, FINISHED_MARKER), "model": SUMMARY_FILE, "analyse": LEAK_JSON, "report": INDEX}
"""The file each stage writes last into its directory: its finished marker (lit_susc.rundir)."""
MIN_UPSAMPLING = 4
"""aux_predict must cover at least this many times the tokens of the sample stage."""


@dataclass
class WandbConfig:
    """Tracking of every stage in Weights & Biases through Lightning's WandbLogger."""

    enabled: bool = False
    """Log each stage (metrics, plots, the cluster table) as a wandb run in one group."""
    project: str = "lit-susc"
    """wandb project."""
    entity: str | None = None
    """wandb entity (team or user); None: your default."""
    group: str | None = None
    """Group of this pipeline's runs; None: the output directory's name."""
    mode: str | None = None
    """'online', 'offline' or 'disabled'; None: wandb's default (the WANDB_MODE variable)."""

    @classmethod
    def from_section(cls, where: str, section: dict | None) -> WandbConfig:
        """The ``wandb:`` section of a YAML (``where`` names it in errors)."""
        section = section or {}
        bad = sorted(set(section) - set(cls.__dataclass_fields__))
        if bad:
            raise ValueError(f"{where}: unknown wandb field(s) {', '.join(bad)}")
        return cls(**section)

    def run_args(self, output_dir: Path, name: str, fingerprint: str, save_dir: Path) -> dict:
        """WandbLogger's arguments for the run ``name`` of the runs written under ``output_dir``: in the
        group of ``output_dir`` (unless ``group`` is set), its id fixed by ``fingerprint`` (so a resumed
        run logs to the same wandb run, a changed one to a new run)."""
        group = self.group or output_dir.resolve().name
        args = {"project": self.project, "name": f"{group}/{name}", "group": group, "job_type": name,
                "id": f"{json_digest([str(output_dir.resolve()), fingerprint])}-{name}".replace("_", "-"),
                "save_dir": str(save_dir), "resume": "allow"}
        if self.entity:
            args["entity"] = self.entity
        if self.mode:
            args["mode"] = self.mode
        return args


@dataclass
class PipelineConfig:
    """One YAML for every stage: each section is what the stage's own command takes (module docstring)."""

    output_dir: str = "runs/pipeline"
    """Where every stage writes its directory."""
    threads: int | Literal["auto"] | None = "auto"
    """CPU threads of each stage's process (OMP_NUM_THREADS and MKL_NUM_THREADS, which torch's intra-op
    pool follows); None: as the environment sets them; 'auto': the environment's OMP_NUM_THREADS when
    set, else 1 on a machine of at most 4 cores, which is usually shared (lit_susc.stage_process).
    Not part of any stage's identity."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sample: dict = field(default_factory=dict)
    """The ``run.py sample`` config: ``trainer`` and ``model`` (model.output_dir is filled in)."""
    aux_fit: dict = field(default_factory=dict)
    """The ``run.py aux fit`` config (susceptibilities, output_dir filled in)."""
    aux_predict: dict = field(default_factory=dict)
    """The ``run.py aux predict`` config (aux_dir, output_dir filled in; data.source defaults to the sample's)."""
    cluster: dict = field(default_factory=dict)
    """The ``run.py cluster`` config (input_dir: the aux predictions; output_dir filled in)."""
    analyse: dict = field(default_factory=dict)
    """The ``run.py analyse`` config (sample_dir, aux_dir, output_dir filled in)."""
    report: dict = field(default_factory=dict)
    """The ``run.py report`` config (the stage directories and report_dir filled in)."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        from .stage_cli import read_runner_yaml

        raw = read_runner_yaml(path, "pipeline", list(cls.__dataclass_fields__), STAGES[1:], cls.output_dir)
        wandb = WandbConfig.from_section(str(path), raw.pop("wandb", None))
        threads = check_threads(str(path), raw.pop("threads", "auto"))
        return cls(threads=threads, wandb=wandb, **{k: v or {} for k, v in raw.items()})


class Pipeline:
    """Plans the stage configs from a PipelineConfig and runs the stages that are not finished."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.out = Path(config.output_dir).resolve()
        self.state_dir = self.out / "pipeline"
        sample_model = config.sample.get("model") or {}
        self.trains_model = sample_model.get("pretrained") is None
        self.stages = [s for s in STAGES if s != "model" or self.trains_model]

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    # -- the stage configs -------------------------------------------------------------------

    def stage_config(self, stage: str, logger: bool = True) -> dict:
        """The config file a stage's command receives (the directories filled in; with ``logger``
        the wandb logger of the stages that have a Trainer, when wandb is enabled)."""
        c, d = copy.deepcopy(self.config), self.stage_dir
        if stage == "model":
            model = c.sample.get("model") or {}
            data = model.get("data") or {}
            return {"tiny_lm": model.get("tiny_lm") or {}, "source": data.get("source", "stdlib")}
        if stage == "sample":
            c.sample.setdefault("model", {})
            c.sample["model"]["output_dir"] = str(d("sample"))
            if self.trains_model:
                c.sample["model"].pop("tiny_lm", None)
                c.sample["model"]["pretrained"] = str(d("model") / "model")
            if logger:
                self._with_logger(c.sample, "sample")
            return c.sample
        if stage == "aux_fit":
            if logger:
                self._with_logger(c.aux_fit, "aux_fit")
            return {**c.aux_fit, "sample_dir": str(d("sample")), "output_dir": str(d("aux_fit"))}
        if stage == "aux_predict":
            data = c.aux_predict.setdefault("data", {})
            data.setdefault("source", ((c.sample.get("model") or {}).get("data") or {}).get("source", "stdlib"))
            return {**c.aux_predict, "aux_dir": str(d("aux_fit")), "output_dir": str(d("aux_predict"))}
        if stage == "cluster":
            return {**c.cluster, "input_dir": str(d("aux_predict")), "output_dir": str(d("cluster"))}
        if stage == "analyse":
            return {**c.analyse, "sample_dir": str(d("sample")), "aux_dir": str(d("aux_fit")),
                    "output_dir": str(d("analyse"))}
        if stage == "report":
            return {**c.report, "report_dir": str(d("report")), "cluster_dir": str(d("cluster")),
                    "sample_dir": str(d("sample")), "aux_dir": str(d("aux_fit")), "analysis_dir": str(d("analyse"))}
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")

    def _with_logger(self, section: dict, stage: str) -> None:
        """Stages with a Lightning Trainer log their steps to the stage's wandb run."""
        if self.config.wandb.enabled:
            section.setdefault("trainer", {})["logger"] = {
                "class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": self.wandb_args(stage)}

    def wandb_args(self, stage: str) -> dict:
        return self.config.wandb.run_args(self.out, stage, self.fingerprint(stage), self.state_dir)

    def fingerprint(self, stage: str) -> str:
        """What makes a stage's result what it is: its config and the fingerprints of the stages before it."""
        i = self.stages.index(stage)
        upstream = self.fingerprint(self.stages[i - 1]) if i > 0 else ""
        # Where the steps are logged does not change the result; nor, where the stage's outputs are
        # the same on any number of ranks, how many processes compute them.
        config = self.stage_config(stage, logger=False)
        trainer = {k: v for k, v in (config.get("trainer") or {}).items()
                   if k not in RESULT_FREE_TRAINER_KEYS and not (stage in RANK_INVARIANT and k in PROCESS_KEYS)}
        config = {**config, "trainer": trainer} if "trainer" in config else config
        return json_digest([stage, config, upstream])

    # -- state -------------------------------------------------------------------------------

    def _state_file(self, stage: str) -> Path:
        return self.state_dir / f"{stage}.json"

    def finished(self, stage: str) -> bool:
        """Whether the stage's directory is finished: the stage's own marker (lit_susc.rundir.is_finished)."""
        return is_finished(self.stage_dir(stage), MARKERS[stage])

    def _state(self, stage: str) -> dict | None:
        path = self._state_file(stage)
        # Deleting the state alone would leave a stage directory the pipeline has no record of, and so
        # refuses; --from-stage clears both.
        return read_json(path, f"rerun the pipeline with --from-stage {stage}: it computes {stage} and the stages "
                               "after it again") if path.exists() else None

    def status(self, stage: str) -> str:
        """'finished' (same config), 'resume' (same config, interrupted), 'changed' (another config),
        'stale' (finished, but the stage before it was computed again since), or 'new'.

        The state file holds what the stage directory cannot: the fingerprint it was run with,
        whether the pipeline's checks after the stage passed, and which computation of the stage
        before it (``computed``, a fresh id each time a stage finishes) it read; the stage's
        directory says whether it finished.
        """
        state = self._state(stage)
        if state is None:
            return "new"
        if state["fingerprint"] != self.fingerprint(stage):
            return "changed"
        if not (state["finished"] and self.finished(stage)):
            return "resume"
        return "finished" if state.get("upstream") == self._upstream(stage) else "stale"

    def _upstream(self, stage: str) -> str | None:
        """The ``computed`` id of the stage before ``stage`` (None for the first stage, or one that
        has not finished)."""
        i = self.stages.index(stage)
        state = self._state(self.stages[i - 1]) if i > 0 else None
        return state.get("computed") if state and state["finished"] else None

    # -- running -----------------------------------------------------------------------------

    def check(self) -> None:
        """Errors that can be found before anything runs: every section parsed and its settings built
        as its stage's command will (lit_susc.stage_cli.check_section), so that a typo in the last
        section is found before the first stage starts."""
        from .stage_cli import check_section
        from .tinylm import TinyLMConfig

        if not self.config.sample.get("model"):
            raise ValueError("the pipeline config has no sample.model section: say which model and data to sample")
        for stage in self.stages:
            config = self.stage_config(stage)
            if stage == "model":
                try:
                    TinyLMConfig(**config["tiny_lm"])
                except TypeError as err:  # an unknown field
                    raise ValueError(f"the sample.model.tiny_lm section: {err}") from err
            else:
                check_section(stage, config)
        self._check_upsampling()

    def command(self, stage: str) -> list[str]:
        """The ``run.py`` arguments of a stage's command, before ``--config``."""
        return {"aux_fit": ["aux", "fit"], "aux_predict": ["aux", "predict"]}.get(stage, [stage])

    def stage_configs_text(self) -> str:
        """Every stage's config as its command would receive it, one YAML document per stage."""
        docs = []
        for stage in self.stages:
            how = ("the pipeline trains it itself" if stage == "model" else
                   f"run.py {' '.join(self.command(stage))} --config {self.state_dir / f'{stage}.yaml'}")
            docs.append(f"# {stage}: {how}\n" + yaml.safe_dump(self.stage_config(stage), sort_keys=False))
        return "---\n".join(docs)

    def _check_upsampling(self) -> None:
        data = (self.config.sample.get("model") or {}).get("data") or {}
        context = data.get("context_length", 128)
        sampled = data.get("observation_contexts", 32) * (context - 1)
        predict = self.config.aux_predict.get("data") or {}
        contexts = predict.get("max_contexts")
        length = predict.get("context_length") or context
        if contexts is not None and contexts * (length - 1) < MIN_UPSAMPLING * sampled:
            raise ValueError(f"aux_predict.data.max_contexts={contexts} gives {contexts * (length - 1)} tokens, fewer "
                             f"than {MIN_UPSAMPLING}x the {sampled} tokens of the sample stage; raise it to at least "
                             f"{-(-MIN_UPSAMPLING * sampled // (length - 1))} (or null for the whole source)")

    def run(self, from_stage: str | None = None) -> Path:
        """Run every stage that is not finished; returns the report's index.html."""
        if from_stage is not None and from_stage not in self.stages:
            raise ValueError(f"--from-stage {from_stage!r} is not a stage of this pipeline; stages: "
                             f"{', '.join(self.stages)}")
        self.check()
        hold(self.state_dir)  # two pipelines into one output_dir would clear each other's stages
        forced = self.stages[self.stages.index(from_stage):] if from_stage else []
        for stage in self.stages:
            status = "changed" if stage in forced else self.status(stage)
            if status in ("changed", "stale"):
                why = ("asked" if stage in forced else "its config or an earlier stage's changed" if status == "changed"
                       else "the stage before it was computed again since")
                print(f"lit-susc pipeline: {stage}: recomputing ({why})")
                self._clear(stage)
                status = "new"
            if status == "finished":
                print(f"lit-susc pipeline: {stage}: finished with the same config, skipped ({self.stage_dir(stage)})")
                continue
            self._run_stage(stage, resume=status == "resume")
        index = self.stage_dir("report") / "index.html"
        print(f"\nlit-susc pipeline: done. Open the cluster browser: {index.resolve().as_uri()}")
        return index

    def _clear(self, stage: str) -> None:
        self._state_file(stage).unlink(missing_ok=True)
        if self.stage_dir(stage).exists():
            shutil.rmtree(self.stage_dir(stage))

    def _run_stage(self, stage: str, resume: bool) -> None:
        config = self.stage_config(stage)
        config_path = self.state_dir / f"{stage}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        if self.stage_dir(stage).exists() and not resume:
            raise ValueError(f"{self.stage_dir(stage)} exists but this pipeline has no record of it; move it away "
                             "or choose another output_dir")
        write_json(self._state_file(stage), {"stage": stage, "fingerprint": self.fingerprint(stage),
                                             "finished": False})
        print(f"\nlit-susc pipeline: {stage}: {'resuming' if resume else 'running'} -> {self.stage_dir(stage)}",
              flush=True)
        start = time.time()
        if stage == "model":
            from .tinylm import TinyLMConfig, train_tiny_lm

            with in_process_threads(self.config.threads):
                train_tiny_lm(self.stage_dir("model"), TinyLMConfig(**config["tiny_lm"]), source=config["source"])
        else:
            self._subprocess([*self.command(stage), "--config", str(config_path)], stage)
        seconds = time.time() - start
        self._after(stage)
        write_json(self._state_file(stage), {"stage": stage, "fingerprint": self.fingerprint(stage), "finished": True,
                                             "seconds": round(seconds, 1), "computed": uuid.uuid4().hex,
                                             "upstream": self._upstream(stage)})
        print(f"lit-susc pipeline: {stage}: finished in {seconds:.0f} s", flush=True)

    def stage_env(self) -> dict[str, str]:
        """The environment of a stage's process."""
        return stage_environment(self.config.threads)

    def _subprocess(self, args: list[str], stage: str) -> None:
        """Run a stage's command as a process of its own, ended with the pipeline (lit_susc.stage_process)."""
        run_stage_process(args, f"stage {stage}", self.stage_env(),
                          started=lambda pid: write_json(self._state_file(stage), {**self._state(stage), "pid": pid}))

    def _after(self, stage: str) -> None:
        """Checks that the stage left a finished result, then its wandb record."""
        if not self.finished(stage):
            raise StageFailedError(f"stage {stage} exited without its finished marker "
                                   f"{self.stage_dir(stage) / MARKERS[stage]}; rerun the pipeline to resume it")
        if stage == "aux_predict":
            self._check_upsampled()
        if self.config.wandb.enabled:
            from .tracking import log_stage

            log_stage(self, stage)

    def _check_upsampled(self) -> None:
        sampled = read_summary(self.stage_dir("sample"))["tokens"]
        predicted = read_metadata(self.stage_dir("aux_predict"))["n_tokens"]
        if predicted < MIN_UPSAMPLING * sampled:
            raise ValueError(f"aux_predict produced {predicted} tokens, fewer than {MIN_UPSAMPLING}x the {sampled} "
                             "sampled ones: the data source ran out; give aux_predict.data a larger source")


def main(argv: list[str] | None = None) -> Path:
    """``run.py pipeline --config FILE [--from-stage STAGE | --print_config]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="run.py pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the pipeline's YAML (see configs/quickstart.yaml)")
    parser.add_argument("--from-stage", choices=STAGES, default=None,
                        help="recompute this stage and every stage after it")
    parser.add_argument("--print_config", action="store_true",
                        help="print the config each stage's command would get (pipeline/<stage>.yaml), then exit")
    args = parser.parse_args(argv)
    pipeline = Pipeline(PipelineConfig.from_yaml(args.config))
    if args.print_config:
        pipeline.check()
        print(pipeline.stage_configs_text())
        return pipeline.state_dir
    return pipeline.run(from_stage=args.from_stage)
