"""Loading causal LMs, and a tiny Pythia-style model trained offline for the quickstart.

``train_tiny_lm`` trains a byte-level BPE tokenizer and a 1.3M-parameter GPT-NeoX (the Pythia
architecture; or a Llama with grouped-query attention, ``architecture: llama``) on the Python
standard library in under two minutes on one or two idle CPU cores, so that every part of the
library can be exercised without the model hub. Real models go through
``load_causal_lm`` (a hub name or a local path, e.g. the directory ``train_tiny_lm`` returns).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader, TensorDataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from callbacks.progress import StepProgressBar
from lit_susc.corpus import (
    encode_texts,
    hub_unreachable,
    load_texts,
    looks_like_path,
    make_contexts,
    train_bpe_tokenizer,
)
from lit_susc.rundir import CorruptFileError, is_finished, read_json, sha256_of, write_json

SUMMARY_FILE = "train_summary.json"
"""Written last into ``out_dir``: its presence marks a finished, reusable training run. Its
``sha256`` maps each file of the model directory to the digest it was written with, checked
whenever the model is reused."""
TRAINING_PREFIX = ".training-"
"""A training run works in ``out_dir/.training-<host>-<pid>-<random>/`` until it moves the model into place."""
_TRAINING_DIR = re.compile(rf"^{re.escape(TRAINING_PREFIX)}(?P<host>.*)-(?P<pid>\d+)-[a-z0-9_]+$")


@dataclass
class TinyLMConfig:
    """Architecture and training recipe of the quickstart model."""

    architecture: Literal["gpt_neox", "llama"] = "gpt_neox"
    """'gpt_neox': Pythia's (parallel residual, partial rotary, LayerNorm, GELU MLP); 'llama':
    Llama's (sequential residual, full rotary, RMSNorm, SwiGLU MLP, grouped-query attention)."""
    vocab_size: int = 2048
    """BPE vocabulary size to train (tokens, incl. ``<|endoftext|>``); a small corpus may yield fewer."""
    hidden_size: int = 128
    """Residual stream width."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads per block (must divide hidden_size)."""
    num_key_value_heads: int | None = None
    """Key/value heads per block ('llama' only; must divide num_heads): num_heads / num_key_value_heads
    query heads share each key/value group. None: as many as query heads."""
    intermediate_size: int = 512
    """MLP hidden width."""
    context_length: int = 128
    """Tokens per training context; also the model's max_position_embeddings."""
    train_steps: int = 300
    """Optimizer steps."""
    batch_size: int = 16
    """Contexts per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate, reached after linear warmup, then cosine-decayed to lr/10."""
    warmup_steps: int = 30
    """Steps of linear learning-rate warmup from 0."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    seed: int = 0
    """Seeds the context split, data order and weight initialization."""
    max_train_contexts: int | None = None
    """Cap on training contexts drawn (at random) from the corpus; None uses all of them."""
    eval_contexts: int = 64
    """Held-out contexts (drawn at random, never trained on) for the before/after loss."""
    checkpoints: list[int] = field(default_factory=list)
    """Optimizer steps after which the model is also saved, to ``checkpoints/step<N>/`` beside the
    final one (``checkpoint_dir``; 0: at initialisation, before the first step), for a developmental
    study (``run.py develop``)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "context_length",
                     "train_steps", "batch_size", "eval_contexts"):
            if getattr(self, name) < 1:
                raise ValueError(f"TinyLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_train_contexts is not None and self.max_train_contexts < 1:
            raise ValueError(f"TinyLMConfig.max_train_contexts must be >= 1 or None, got {self.max_train_contexts}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(f"TinyLMConfig needs lr > 0, warmup_steps >= 0, weight_decay >= 0; got "
                             f"{self.lr}, {self.warmup_steps}, {self.weight_decay}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"TinyLMConfig.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if self.architecture not in ("gpt_neox", "llama"):
            raise ValueError(f"TinyLMConfig.architecture must be 'gpt_neox' or 'llama', got {self.architecture!r}")
        bad = [s for s in self.checkpoints if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= self.train_steps]
        if bad or len(set(self.checkpoints)) != len(self.checkpoints):
            raise ValueError(f"TinyLMConfig.checkpoints must be distinct whole steps from 0 to train_steps="
                             f"{self.train_steps}, got {self.checkpoints}")
        if self.num_key_value_heads is not None:
            if self.architecture != "llama":
                raise ValueError("TinyLMConfig.num_key_value_heads is for architecture 'llama' (GPT-NeoX has no "
                                 "grouped-query attention); remove it or set architecture: llama")
            if self.num_key_value_heads < 1 or self.num_heads % self.num_key_value_heads:
                raise ValueError(f"TinyLMConfig.num_key_value_heads={self.num_key_value_heads} must be >= 1 and "
                                 f"divide num_heads={self.num_heads}")

    def recipe(self) -> dict:
        """The fields that define the model, for comparing with a trained one. Fields added later are
        left out at their defaults, so models trained before they existed are still recognised."""
        later = {"architecture": "gpt_neox", "num_key_value_heads": None, "checkpoints": []}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.name in later and getattr(self, f.name) == later[f.name])}


def build_tiny_lm(config: TinyLMConfig, vocab_size: int, eos_token_id: int) -> PreTrainedModel:
    """A freshly initialized model of ``config.architecture`` sized by ``config``."""
    if config.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_key_value_heads or config.num_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.context_length,
            tie_word_embeddings=False,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
        ))
    neox = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.context_length,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    return GPTNeoXForCausalLM(neox)


class TinyLMModule(L.LightningModule):
    """Next-token cross-entropy training of a causal LM with AdamW and warmup + cosine decay."""

    def __init__(self, model: PreTrainedModel, config: TinyLMConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (input_ids,) = batch
        loss = self.model(input_ids=input_ids, labels=input_ids).loss  # labels are shifted inside
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        cfg = self.config
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)

        def factor(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.train_steps - cfg.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


CHECKPOINTS_DIR = "checkpoints"


def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    """Where ``train_tiny_lm(out_dir, ...)`` saves the model after ``step`` optimizer steps (a model
    directory like the final one, tokenizer included)."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"step{step:08d}"


class _SaveCheckpoints(L.Callback):
    """Saves the model and tokenizer into ``checkpoint_dir(root, step)`` after each of ``steps``."""

    def __init__(self, root: Path, steps: list[int], tokenizer: PreTrainedTokenizerBase) -> None:
        self.root, self.steps, self.tokenizer = root, set(steps), tokenizer

    def save(self, model: PreTrainedModel, step: int) -> None:
        model.save_pretrained(checkpoint_dir(self.root, step))
        self.tokenizer.save_pretrained(checkpoint_dir(self.root, step))

    def on_train_batch_end(self, trainer, pl_module, *_) -> None:
        if trainer.global_step in self.steps:
            self.save(pl_module.model, trainer.global_step)


def _digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by its path relative to it."""
    return {str(f.relative_to(directory)): sha256_of(f) for f in sorted(directory.rglob("*")) if f.is_file()}


@torch.no_grad()
def _mean_loss(model: PreTrainedModel, input_ids: torch.Tensor) -> float:
    model.eval()
    loss = model(input_ids=input_ids, labels=input_ids).loss.item()
    model.train()
    return loss


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _remove_abandoned_training_dirs(out_dir: Path) -> None:
    """Delete the working directories that killed training runs left in ``out_dir``: those of a
    process of this host that no longer runs, and those named before they carried host and pid.
    A directory of a live process, or of another host (which this one cannot ask), is kept."""
    if not out_dir.is_dir():
        return
    host = socket.gethostname()
    for path in out_dir.glob(f"{TRAINING_PREFIX}*"):
        match = _TRAINING_DIR.match(path.name)
        if path.is_dir() and (match is None or (match["host"] == host and not _process_alive(int(match["pid"])))):
            shutil.rmtree(path)


def train_tiny_lm(
    out_dir: str | os.PathLike,
    config: TinyLMConfig | None = None,
    source: str = "stdlib",
    progress: bool = True,
    max_documents: int | None = None,
) -> Path:
    """Train (or reuse) the tiny LM and its tokenizer; return the model directory ``out_dir/model``.

    The tokenizer is trained on the documents of ``source`` (see ``corpus.load_texts``, at most
    ``max_documents``), which are then cut into contexts; ``config.eval_contexts`` random ones
    are held out to report the loss before and after training in ``out_dir/train_summary.json``.
    The run happens in a temporary directory that is moved into place, with the summary written
    last; if the summary exists the finished model is returned without retraining, once every file
    of the model directory matches the sha256 the summary records for it. The steps of
    ``config.checkpoints`` are saved as model directories too (``checkpoint_dir``), checked alike.

    Raises:
        ValueError: if ``out_dir`` holds a model trained with a different config or source.
        CorruptFileError: if a file of the model directory differs from what was written.
    """
    config = config or TinyLMConfig()
    out_dir = Path(out_dir)
    model_dir, summary_path = out_dir / "model", out_dir / SUMMARY_FILE
    _remove_abandoned_training_dirs(out_dir)
    recipe = {"config": config.recipe(), "source": source, "max_documents": max_documents}
    remedy = f"delete {out_dir} and rerun the same command: the tiny LM is trained again"
    if is_finished(out_dir, SUMMARY_FILE) and model_dir.is_dir():
        summary = read_json(summary_path, remedy)
        if {k: summary.get(k) for k in recipe} != recipe:
            raise ValueError(
                f"{out_dir} holds a tiny LM trained with {({k: summary.get(k) for k in recipe})}, not {recipe}; "
                "use another out_dir or delete it to retrain"
            )
        # a summary written before checksums existed records none: its model is reused unchecked
        recorded = [(model_dir, summary.get("sha256", {})), (out_dir / CHECKPOINTS_DIR, summary.get("checkpoints_sha256", {}))]
        for directory, digests in recorded:
            for name, digest in digests.items():
                if not (directory / name).is_file() or sha256_of(directory / name) != digest:
                    raise CorruptFileError(f"{directory / name} is missing or corrupt (it differs from the sha256 "
                                           f"{SUMMARY_FILE} records for it); {remedy}")
        return model_dir

    began = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)  # a summary without its model must not mark the new run finished
    tmp = Path(tempfile.mkdtemp(prefix=f"{TRAINING_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=out_dir))
    try:
        L.seed_everything(config.seed, verbose=False)
        documents = load_texts(source, max_documents=max_documents)
        tokenizer = train_bpe_tokenizer(documents, config.vocab_size, tmp / "model")
        contexts = make_contexts(tokenizer, documents, config.context_length)
        if len(contexts) <= config.eval_contexts:
            raise ValueError(
                f"{source!r} gave only {len(contexts)} contexts of {config.context_length} tokens, not more than "
                f"eval_contexts={config.eval_contexts}; use more documents or a smaller context_length/eval_contexts"
            )
        order = torch.randperm(len(contexts), generator=torch.Generator().manual_seed(config.seed))
        eval_ids = contexts.input_ids[order[: config.eval_contexts]]
        train_ids = contexts.input_ids[order[config.eval_contexts :][: config.max_train_contexts]]

        model = build_tiny_lm(config, len(tokenizer), tokenizer.eos_token_id)
        initial_loss = _mean_loss(model, eval_ids)
        saver = _SaveCheckpoints(tmp, config.checkpoints, tokenizer)
        if 0 in config.checkpoints:
            saver.save(model, 0)
        loader = DataLoader(
            TensorDataset(train_ids),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(train_ids) >= config.batch_size,
            generator=torch.Generator().manual_seed(config.seed),
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=config.train_steps,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            callbacks=[saver, *([StepProgressBar("training tiny LM")] if progress else [])],
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        trainer.fit(TinyLMModule(model, config), loader)
        final_loss = _mean_loss(model, eval_ids)

        model.save_pretrained(tmp / "model")  # safetensors, the default
        summary = {
            **recipe,
            "vocab_size": len(tokenizer),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "train_contexts": len(train_ids),
            "eval_contexts": len(eval_ids),
            "initial_loss": initial_loss,
            "final_loss": final_loss,
            "steps": trainer.global_step,
            "seconds": time.perf_counter() - began,
            "sha256": {f.name: sha256_of(f) for f in sorted((tmp / "model").iterdir()) if f.is_file()},
            **({"checkpoints_sha256": _digests(tmp / CHECKPOINTS_DIR)} if config.checkpoints else {}),
        }
        # A model directory without a summary is a leftover of an interrupted move.
        for name in ("model", CHECKPOINTS_DIR):
            if (out_dir / name).exists():
                shutil.rmtree(out_dir / name)
            if (tmp / name).exists():
                os.replace(tmp / name, out_dir / name)
        write_json(summary_path, summary)  # last: the finished marker
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def _sources(name: str, revision: str | None, trust_remote_code: bool) -> tuple[dict, str | None]:
    """``from_pretrained``'s options for ``name``, and why the hub is out of reach (None: it is not,
    or ``name`` is a local directory, which must then exist)."""
    directory = Path(name).expanduser()
    local = looks_like_path(name)
    if local and not directory.is_dir():
        state = "is not a directory" if directory.exists() else "does not exist"
        raise ValueError(f"model directory {name} {state}; pretrained is a hub name (EleutherAI/pythia-14m) or "
                         "a directory with config.json, the weights and the tokenizer files")
    # transformers retries a hub it cannot reach for about 30 s before it reads its cache
    unreachable = None if local else hub_unreachable()
    return {"revision": revision, "trust_remote_code": trust_remote_code,
            "local_files_only": unreachable is not None}, unreachable


def _not_loaded(name: str, unreachable: str | None, err: OSError) -> ValueError:
    """transformers' OSError for a model it cannot find or read, said as what to do."""
    if unreachable:
        return ValueError(
            f"model {name!r} is neither a local directory nor in the hub cache, and the hub is out of reach "
            f"({unreachable}); where it is reachable, download it (huggingface-cli download {name} --local-dir "
            "models/<name>), copy the directory here and set pretrained: /path/to/models/<name> "
            "(README, \"Configs for real models\")")
    return ValueError(f"cannot load model {name!r}: {err}")


def _opens(path: Path) -> bool:
    """Whether safetensors can read ``path``'s header (which it checks against the file's length)."""
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except SafetensorError:
        return False


def _corrupt_weights(name: str, revision: str | None, err: SafetensorError) -> CorruptFileError:
    """safetensors' error for a weights file it cannot parse (truncated, or its header damaged), said
    as which file it is and how to get it whole again."""
    reason = " ".join(str(err).split())
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if (folder.parent / SUMMARY_FILE).exists():
            remedy = (f"delete {folder.parent} and rerun the pipeline (or the command that trained it): its model "
                      "stage trains the tiny LM again")
        else:
            remedy = f"copy or download the model into {folder} again"
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:  # the copy transformers just read, found without the network
            folder = Path(snapshot_download(name, revision=revision, local_files_only=True))
            remedy = f"delete {folder.parents[1]} (the model's copy in the hub cache) and run again to download it"
        except LocalEntryNotFoundError:
            folder, remedy = None, "delete the model's copy in the hub cache (hf cache delete) and run again"
    broken = [p for p in sorted(folder.glob("*.safetensors")) if not _opens(p)] if folder else []
    what = str(broken[0]) if broken else f"a weights file of model {name!r}"
    return CorruptFileError(f"{what} is corrupt ({reason}); {remedy}")


def load_causal_lm(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode from the hub or a local directory.

    E.g. ``load_causal_lm("EleutherAI/pythia-14m", revision="step1000")`` for a Pythia training
    checkpoint, or ``load_causal_lm(train_tiny_lm(out_dir))`` offline. A name that exists or starts
    with ``/``, ``.`` or ``~`` is a local directory (lit_susc.corpus.looks_like_path). When the hub
    cannot be reached, a hub name is read from the local cache at once.

    Raises:
        ValueError: the directory does not exist, the hub cannot be reached and the model is not
            cached, transformers cannot load it (its reason), or the tokenizer files are missing.
        CorruptFileError: a weights file is truncated or its header damaged (the message names it).
    """
    name, directory = str(name_or_path), Path(name_or_path).expanduser()
    options, unreachable = _sources(name, revision, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **options)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **options)
    except OSError as err:  # transformers' word for a model it cannot find or read
        raise _not_loaded(name, unreachable, err) from err
    except SafetensorError as err:
        raise _corrupt_weights(name, revision, err) from err
    if not encode_texts(tokenizer, ["hello world"])[0]:
        # transformers builds an empty tokenizer when the files are missing; every text is then no tokens
        present = f" ({name} holds {', '.join(sorted(p.name for p in directory.iterdir()))})" if looks_like_path(name) else ""
        raise ValueError(f"model {name!r} has no tokenizer files{present}: it needs tokenizer.json (or "
                         "tokenizer.model, or vocab.json with merges.txt) and tokenizer_config.json; copy them from "
                         "where the model came from")
    return model.eval(), tokenizer


def load_causal_lm_on_meta(name_or_path: str | os.PathLike, *, revision: str | None = None,
                           trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM built from its config alone on the meta device: its parameters' names and shapes,
    no weights read (only config.json is needed, so a 7B model's layout costs nothing). Found as
    ``load_causal_lm`` finds a model, with the same errors."""
    options, unreachable = _sources(str(name_or_path), revision, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(name_or_path, **options)
    except OSError as err:
        raise _not_loaded(str(name_or_path), unreachable, err) from err
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
