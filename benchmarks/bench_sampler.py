"""SGLD step and observation pass against a plain forward/backward of the same model.

    python benchmarks/bench_sampler.py [--hidden 256] [--layers 4] [--device cpu]

Prints, measured side by side in one run on a GPT-NeoX of a few million parameters:
  step ratio  = time per SGLD step (inside the Lightning loop, all overhead included)
                / time per plain forward+backward of the whole model on the same batch  (goal <= 1.10)
  draw ratio  = time per draw's observation pass / plain no-grad forward over the same tokens
                                                                                          (goal <= 1.05)
                (also printed: the whole draw, which adds L_ref on the reference batch)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning as L
import torch
from timing import timed
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from lit_susc.components import discover_components, select_components
from lit_susc.config import ComputeConfig, SGLDConfig
from lit_susc.engine import make_trainer
from lit_susc.lm import per_token_loss
from lit_susc.sampler import SamplingData, SusceptibilitySampler


class StepTimer(L.Callback):
    """Wall time between consecutive batch ends, split by whether the batch took a draw."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.draws: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        chain = outputs["chains"][0]
        if self._last is not None and chain["step"] > 0:
            (self.draws if chain["draw"] is not None else self.steps).append(now - self._last)
        self._last = now



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--obs-contexts", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prefix-cache", action="store_true",
                    help="run the chains with prefix caching (off: the engine's overhead on the full model; "
                         "benchmarks/bench_prefix.py measures caching per component)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=4, intermediate_size=4 * args.hidden,
                        max_position_embeddings=args.context, rotary_pct=0.25)
    model = GPTNeoXForCausalLM(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, args.vocab, (args.batch * 4, args.context))
    obs = torch.randint(0, args.vocab, (args.obs_contexts, args.context))
    batches = [ids[i:i + args.batch] for i in range(0, len(ids), args.batch)]
    comps = select_components(discover_components(model), [f"layers.{args.layers // 2}.heads.0",
                                                            f"layers.{args.layers // 2}.mlp", "embed", "unembed"])
    sgld = SGLDConfig(lr=1e-6, nbeta=10.0, localization=300.0, chains=1, draws=3, burn_in=0,
                      steps_between_draws=15, seed=0)
    data = SamplingData(sampling=batches, observation=[obs], reference=batches[0])
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as run_dir:
        module = SusceptibilitySampler(model, per_token_loss, comps, data, sgld, run_dir,
                                       ComputeConfig(prefix_cache=args.prefix_cache))
        trainer = make_trainer({"accelerator": device.type, "enable_progress_bar": False, "callbacks": [timer]},
                               run_dir)
        trainer.fit(module)

    # Baselines on the same model, batch and tokens, after the run (model is back at w*).
    model.to(device).train(False)
    for p in model.parameters():
        p.requires_grad_(True)
    batch, obs_d = batches[0].to(device), obs.to(device)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()

    def forward():
        with torch.no_grad():
            model(input_ids=obs_d)

    def observation_pass():
        with torch.no_grad():
            module.engine.observation_losses()

    for fn in (forward_backward, forward, observation_pass):
        fn()  # warm-up
    # Interleaved, so that load on the machine hits both sides alike.
    fb, fwd, obs_pass = [], [], []
    for _ in range(10):
        fb.append(timed(forward_backward, device, 1))
        fwd.append(timed(forward, device, 1))
        obs_pass.append(timed(observation_pass, device, 1))
    fb, fwd, obs_pass = (statistics.median(x) for x in (fb, fwd, obs_pass))
    step = statistics.median(timer.steps)
    draw = statistics.median(timer.draws) - step  # a draw batch also takes one SGLD step
    print(f"GPT-NeoX {n_params / 1e6:.2f}M params, {args.layers} layers, hidden {args.hidden}, device {device}")
    print(f"plain forward+backward ({args.batch}x{args.context} tokens): {fb * 1e3:.2f} ms")
    print(f"SGLD step (median over {len(timer.steps)}, 4 components):   {step * 1e3:.2f} ms")
    print(f"plain no-grad forward ({args.obs_contexts}x{args.context} tokens): {fwd * 1e3:.2f} ms")
    print(f"observation pass (per-token losses of those tokens): {obs_pass * 1e3:.2f} ms")
    print(f"whole draw in the loop (observation pass + L_ref on the {args.batch}-context reference batch): "
          f"{draw * 1e3:.2f} ms")
    print(f"step ratio = {step / fb:.3f}  (goal <= 1.10)")
    print(f"draw ratio = {obs_pass / fwd:.3f}  (goal <= 1.05; with L_ref: {draw / fwd:.3f})")


if __name__ == "__main__":
    main()
