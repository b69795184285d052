"""aux predict throughput against the base model's plain forward up to the deepest layer used.

    python benchmarks/bench_aux.py [--hidden 512] [--layers 12] [--heads 4] [--context 256] [--contexts 96]
    python benchmarks/bench_aux.py --preset pythia-1.4b --device cuda     # the spec's model shape
    python benchmarks/bench_aux.py --tokens 1000000 --hidden 256 --layers 6 --repeats 1   # 10^6 tokens

Builds a randomly initialised GPT-NeoX and an aux model of the spec's shape for it (4 evenly
spaced layers, one PC per component: layers x (heads + 1) + 2, hidden width 16 x PCs), then runs
``upsample`` (tokenization, truncated base forward, aux forward, PC -> component map, shard
writing; the Lightning predict loop) over ``--contexts`` contexts of the standard library, and
a plain no-grad forward of the same model cut after the deepest feature layer over the same
contexts and batch size. Prints tokens/s of both and

    ratio = aux predict tokens/s / plain truncated forward tokens/s          (goal >= 0.9)

measured over the prediction loop (model loading excluded; the end-to-end figure is printed too).
``--tokens`` sets ``--contexts`` to the contexts that hold that many predicted tokens. The peak
RSS during aux predict (VmHWM, reset before it) is printed with the size of the prediction on disk: run at two token
counts, it shows whether memory grows with the tokens (it should not: one shard at a time).
The two are run alternately ``--repeats`` times; each figure is the fastest run (timeit's rule:
on a shared machine the slower runs measure the neighbours). On CPU the ratio of CPU times (this
process's threads; the prefetch worker's tokenization is left out) is printed too: it is far less
sensitive to other processes on the machine than wall time. The aux
model's share of the FLOPs bounds the ratio from above. It is about 5.3 / head_dim x
(layers / deepest layer used): ~6% for Pythia-1.4B (head_dim 128), which the default shape keeps
(512 / 4 heads); it is printed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from lit_susc.aux.bundle import AuxBundle
from lit_susc.aux.features import feature_layers, model_identity
from lit_susc.aux.model import AuxModel
from lit_susc.aux.pca import PCABasis
from lit_susc.aux.predict import StreamConfig, upsample
from lit_susc.corpus import iter_texts, load_texts, make_contexts, train_bpe_tokenizer

PRESETS = {"pythia-1.4b": {"hidden": 2048, "layers": 24, "heads": 16, "context": 2048, "batch": 8}}


class LoopTimer(L.Callback):
    """Wall and CPU time of the prediction loop, first batch to last shard written."""

    def on_predict_start(self, trainer, pl_module) -> None:
        self.began = (time.perf_counter(), time.process_time())

    def on_predict_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = (time.perf_counter() - self.began[0], time.process_time() - self.began[1])


def build(args, root: Path) -> tuple[Path, Path, list[int]]:
    tokenizer = train_bpe_tokenizer(load_texts("stdlib", max_documents=200), 2048, root / "model")
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=args.context,
        rotary_pct=0.25)).eval()
    model.save_pretrained(root / "model")
    layers = feature_layers(args.layers)
    n_components = args.layers * (args.heads + 1) + 2
    n_pcs = args.n_pcs or n_components
    n_features = len(layers) * args.hidden
    aux = AuxModel(n_features, n_pcs)
    q, _ = torch.linalg.qr(torch.randn(n_components, n_pcs, dtype=torch.float64))
    zeros, ones = torch.zeros(n_components, dtype=torch.float64), torch.ones(n_components, dtype=torch.float64)
    pca = PCABasis(mean=zeros, scale=ones, components=q.T.contiguous(), variances=torch.ones(n_pcs, dtype=torch.float64))
    meta = {"config": {"model": {k: getattr(aux.config, k) for k in vars(aux.config)}},
            "base_model": model_identity(str(root / "model"), None, model), "layers": layers,
            "context_length": args.context, "n_features": n_features, "n_pcs": n_pcs,
            "components": [f"component{i}" for i in range(n_components)], "convention": "seed", "nbeta": 10.0}
    (root / "aux").mkdir()
    AuxBundle(model=aux, pca=pca, feature_mean=torch.zeros(n_features, dtype=torch.float64),
              feature_std=torch.ones(n_features, dtype=torch.float64),
              target_scale=torch.ones(n_pcs, dtype=torch.float64), meta=meta).save(root / "aux", {})
    flops_aux = 2 * (n_features * 16 * n_pcs + 16 * n_pcs * n_pcs) + 2 * n_pcs * n_components
    per_layer = 2 * 12 * args.hidden**2 + 2 * args.context * args.hidden  # dense + causal attention (mean)
    print(f"model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads; features from layers {layers}; "
          f"{n_components} components, {n_pcs} PCs; aux share of FLOPs ~ "
          f"{flops_aux / (flops_aux + max(layers) * per_layer):.1%}")
    return root / "model", root / "aux", layers


def plain_forward(model_dir: Path, deepest: int, args, device) -> tuple[float, float]:
    """(wall, CPU) seconds of a no-grad forward of the model cut after block ``deepest``, same contexts."""
    from lit_susc.tinylm import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir)
    model.gpt_neox.layers = model.gpt_neox.layers[:deepest]
    model = model.to(device)
    ids = make_contexts(tokenizer, iter_texts("stdlib"), args.context, max_contexts=args.contexts).input_ids
    batches = [b.to(device) for b in ids.split(args.batch)]
    with torch.inference_mode():
        model.gpt_neox(input_ids=batches[0], use_cache=False)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = (time.perf_counter(), time.process_time())
        for batch in batches:
            model.gpt_neox(input_ids=batch, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - began[0], time.process_time() - began[1]


def _peak_rss_gib() -> float:
    """VmHWM, the peak RSS since the last _reset_peak (or the process's start)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS


def predict(aux_dir: Path, out: Path, args, device) -> tuple[tuple[float, float], float]:
    """((loop wall, loop CPU) seconds, end-to-end seconds) of upsample over the same contexts."""
    timer = LoopTimer()
    trainer = L.Trainer(accelerator=device.type, devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    began = time.perf_counter()
    upsample(trainer, aux_dir, out, StreamConfig(source="stdlib", max_contexts=args.contexts, batch_size=args.batch,
                                                 shard_contexts=args.shard_contexts, prefetch=args.prefetch))
    return timer.seconds, time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--contexts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=None, help="predict this many tokens (sets --contexts)")
    ap.add_argument("--shard-contexts", type=int, default=32)
    ap.add_argument("--n-pcs", type=int, default=None, help="PCs predicted (default: one per component)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                    help="tokenize in a DataLoader worker (StreamConfig.prefetch)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset:
        for k, v in PRESETS[args.preset].items():
            setattr(args, k, v)
    device = torch.device(args.device)
    if args.tokens:
        args.contexts = math.ceil(args.tokens / (args.context - 1))
    tokens = args.contexts * (args.context - 1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, aux_dir, layers = build(args, Path(tmp))
        plain, loop, total = [], [], []
        peaks = []
        for r in range(args.repeats):
            plain.append(plain_forward(model_dir, max(layers), args, device))
            _reset_peak()
            seconds, end_to_end = predict(aux_dir, Path(tmp) / f"pred{r}", args, device)
            peaks.append(_peak_rss_gib())
            loop.append(seconds)
            total.append(end_to_end)
        written = sum(f.stat().st_size for f in (Path(tmp) / "pred0").rglob("*") if f.is_file())
    plain_tps, loop_tps = (tokens / min(wall for wall, _ in t) for t in (plain, loop))
    print(f"{tokens} tokens ({args.contexts} contexts of {args.context}), batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"plain forward up to block {max(layers)}: {plain_tps:,.0f} tokens/s")
    print(f"aux predict (loop):        {loop_tps:,.0f} tokens/s   (end to end incl. model loading: "
          f"{tokens / min(total):,.0f})")
    print(f"ratio = {loop_tps / plain_tps:.3f}   (goal >= 0.9)")
    # (resetting VmHWM resets getrusage's peak too: the plain forward's, which tokenizes every context at once, is
    # not in it)
    print(f"peak RSS during aux predict {max(peaks):.2f} GiB; the prediction on disk {written / 2**20:.0f} MiB")
    if device.type == "cpu":
        cpu_ratio = min(c for _, c in plain) / min(c for _, c in loop)
        print(f"ratio of CPU times = {cpu_ratio:.3f}   (medians of wall times: "
              f"{statistics.median(w for w, _ in plain) / statistics.median(w for w, _ in loop):.3f})")


if __name__ == "__main__":
    main()
