"""lit-susc against its peer, devinterp 2.0.1's ``susceptibilities()``: time and agreement.

    /tmp/devinterp-venv/bin/python benchmarks/bench_devinterp.py      # the default: ~7 min on 2 idle cores
    # = --components "layers.0.*,layers.3.*,unembed" --chains 2 --draws 30 --burn-in 10 --tokens 1000 \
    #   --threads 1 --seed 0   (lr 1e-3, nbeta 100, localization 300, batch 8 contexts of 64 tokens)
    # fewer components, many more draws (the noise ceiling near 0.8; ~35 min on a busy machine):
    /tmp/devinterp-venv/bin/python benchmarks/bench_devinterp.py --components "layers.3.*" --chains 4 --draws 200

devinterp is a benchmark-only dependency, never a project dependency. Install it beside the
project's environment, in a virtualenv that sees the global torch and never replaces it:

    python -m venv --system-site-packages /tmp/devinterp-venv
    /tmp/devinterp-venv/bin/pip install devinterp==2.0.1 --no-deps
    /tmp/devinterp-venv/bin/pip install xarray zarr      # its only missing dependencies here

What runs (one process, side by side, the same settings for both tools):
  * the model: a 1.3M-parameter GPT-NeoX (4 layers, hidden 128, 4 heads, vocab 2048) trained for
    200 steps on this Python's standard library by ``lit_susc.tinylm.train_tiny_lm`` (cached in
    ``--work-dir``; ~30 s the first time), or ``--model-dir``;
  * the data: stdlib contexts of ``--context`` tokens: the observation contexts (chi's columns,
    ``--tokens`` rounded up to whole batches of contexts), then the sampling contexts, whose first
    ``--ref-batches`` batches are the fixed reference batch defining L_ref and phi;
  * the components: ``--components`` (glob patterns over lit-susc's names; the same masks go to
    devinterp as its weight restrictions) plus the whole model ``full``, which devinterp requires
    for its centring (below) and which lit-susc samples too, so that both do the same work. The
    default takes the first and the last layer (a head's or MLP's cost depends on its depth in
    lit-susc, whose prefix cache skips the blocks below a component; layers 0 and 3 average like
    all four) plus the unembedding;
  * the same plain SGLD: lr, nbeta, localization, chains, draws, burn-in, 1 step between draws,
    batch size. Two runs per tool, A and B: lit-susc seeds ``--seed`` and ``--seed + 1``; devinterp
    init_seed ``--seed`` and ``--seed + chains`` (devinterp seeds chain k's noise with init_seed + k,
    so init_seed + 1 would replay all but one of run A's noise streams: with that, devinterp's
    seed-to-seed agreement looked 0.57 instead of its true 0.09).

Timing: one small call of each tool (1 component + full, 1 chain, 3 draws) warms both up first and
is NOT timed; then devinterp A, lit-susc A, devinterp B, lit-susc B, each timed as the whole API
call, in wall time and in this process's CPU time (all threads; what other processes on a shared
machine perturb least):
  devinterp ``susceptibilities()``: per weight restriction (components + full): zarr set-up, its
    init loss (``num_init_loss_batches``, default 32, forward passes per chain: reported apart), a
    deepcopy of the model per chain, the SGLD steps, both observables at every draw, zarr writes
    of every step's minibatch losses and input ids and of every draw's losses; then
    ``compute_susceptibilities`` (reads the zarr stores back).
  lit-susc ``estimate_susceptibilities()`` (its default ComputeConfig: prefix cache on, one chain
    at a time, float32; the observation contexts in forward passes of ``--lit-observation-batch``,
    its CLI's default 32, while devinterp evaluates observables in minibatches of ``--batch``):
    Trainer construction, a temporary run directory, the losses at w*, the SGLD steps,
    the reference and observation passes at every draw folded into float64 sums, writing the
    result (safetensors, parquet) and removing the temporary directory.
  the floor (``--floor``, after the runs): for a few components, a bare PyTorch loop of the same
    passes (forward+backward and a masked update per step, reference and observation forwards per
    draw; no cache, no Lightning, no callbacks), against each tool's CPU time for that component.
Both use ``--threads`` intra-op threads (OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads;
default 1, faster than 2 on this shared 2-core machine). Ratios printed: same work (both whole
calls), lit-susc without its ``full`` chains (which it does not need for the same chi), and
devinterp without its init-loss pass.

How devinterp's estimator differs from lit-susc's (read from devinterp 2.0.1's source:
``slt/susceptibilities.py``, ``slt/sampling.py``, ``slt/sampler.py``, ``optim/sgmcmc.py``):
  * the same SGLD step, w <- w - (lr/2) m [nbeta grad L_B + localization (w - w*)] + sqrt(lr) m N(0, 1),
    the 0/1 mask m on drift and noise alike; the same parameters move (it gets lit-susc's masks);
    its model runs in train() mode (dropout is 0 here: no difference); every devinterp chain
    replays the same minibatch order (seeded by init_seed, first epoch cycled), lit-susc draws an
    order per chain; the noise streams differ, so only statistics can agree.
  * the same observables: phi from the mean per-token loss L of a fixed batch (devinterp: the
    observable named ``sampling_task``, here exactly lit-susc's reference contexts) and l_t, the
    per-token losses of the observation contexts (devinterp shuffles their rows with obs_seed; the
    script undoes it and checks the input ids).
  * sign and scale: devinterp's numbers have the sign and scale of -Cov(phi, l_t - L), no nbeta:
    lit-susc's "baker" convention (= its "seed" value times -1/nbeta); lit-susc runs with
    ``convention="baker"`` here and ``in_convention("baker")`` is what is compared.
  * the centring, the real difference. devinterp returns
        sus_t = E_C[phi L] - E_C[phi l_t] - E_C[phi] (E_full[L] - E_full[l_t]),
    E_C over the draws of component C's restricted run, E_full over the unrestricted run's, and
    phi = L(w_s) - init_loss, init_loss being the loss at w* on the first num_init_loss_batches
    batches of the *sampling* loader, not on the phi batch. The covariance centres with C's own
    mean E_C[L - l_t], so
        sus_t = -Cov_C(phi, l_t - L) + E_C[phi] (E_full[l_t - L] - E_C[l_t - L]).
    The second term is one token profile (how the full-model posterior shifts each token's loss
    relative to L) times a per-component scalar, E_C[phi] = LLC_C / nbeta + (L(w*) - init_loss);
    here it is 30-1000 times larger than the covariance, so devinterp's output is nearly the same
    profile for every component (median Pearson between two components ~0.96-1.00) and its sign
    follows the sign of E_C[phi], i.e. of the data offset L(w*) - init_loss for a small head. The
    script captures devinterp's own draws (its zarr stores, through a thin wrapper around the
    ``sample`` that ``susceptibilities()`` calls), re-evaluates devinterp's formula from them in
    float64 (a check of this reading) and recentres them on C's own run: devinterp's chains turned
    into the exact baker estimator ("dev rc", the apples-to-apples comparison). "dev raw" is what
    devinterp returns. For ``full`` the two centrings coincide.
  * arithmetic: devinterp evaluates its formula in float32 (phi = L - init_loss rounded at |L| ~ 5
    before it is multiplied by losses ~ 5); the table reports that round-off against the size of
    the covariance ("f32 err/|cov|"). lit-susc keeps float64 sums of losses relative to w*.

Findings on this machine (2 shared CPU cores, torch 2.13.0+cpu, 1 thread each, warm-up excluded):
  * default command (11 components + full, 2 chains x 30 draws; 7 min in all): devinterp 128 s /
    126 s, lit-susc 62 s / 57 s (runs A / B; CPU time within 1% of wall): 2.13x for the same work,
    2.50x when lit-susc skips the full run it does not need (a third run, A only: 2.14x / 2.53x).
    ``--lit-observation-dtype bfloat16`` (autocast on this CPU's avx512_bf16): 2.35x / 2.83x.
    Per component (CPU, run A): layer-0 heads and MLP 10.4-11.3 s vs 6.5-8.2 s (~1.5x), layer-3
    ones 9.2-10.5 s vs 2.7-3.6 s (~3.3x: lit-susc's prefix cache skips blocks 0-2 and the block's
    untouched branch), unembed 10.6 s vs 2.4 s (4.4x). The floor explains the total: a bare PyTorch
    loop of layers.0.heads.0's passes takes 7.1 s, devinterp 10.6 s (1.49x the floor), lit-susc
    6.5 s (0.92x); layers.3.heads.0 6.0 s: devinterp 1.59x, lit-susc 0.51x; unembed 5.6 s: 1.67x,
    0.41x. devinterp costs 1.5-1.7x the bare passes; a block-0 component needs the whole model's
    forward and backward at every step and draw, so no exact method gets below ~0.9x of its floor
    on it, and a 3x overall ratio would need every component at <= 0.5x. The 3x goal is met for
    late-layer components only; ``--lit-batch-chains 2`` does not help on CPU (65.6 s, before the
    branch cache).
  * agreement, default command: median over components of Pearson(lit-susc, devinterp recentred)
    0.13, against a seed-to-seed self-agreement of 0.19 (lit-susc) and 0.09 (devinterp): 60 draws
    per component leave per-token chi mostly chain noise, for both tools alike; the cross-tool
    Pearson over the geometric mean of the self-agreements is 0.81 (median over the components
    where both self-agreements are positive), and the mean phi (LLC / nbeta) agrees component by
    component (e.g. layers.0.mlp 0.174 vs 0.170, unembed 0.352 vs 0.331). The components with
    signal agree as well as each tool agrees with itself (layers.3.heads.1: 0.77 across tools vs
    0.68 / 0.54 self).
  * agreement with 800 draws per component (``--components "layers.3.*" --chains 4 --draws 200``,
    29 min): median Pearson(lit-susc, devinterp recentred) 0.82 (0.69-0.92 per component), against
    a self-agreement of 0.81 (lit-susc) and 0.80 (devinterp); averaging both runs of each tool,
    0.92; ratio to the noise ceiling 1.01; std(devinterp) / std(lit-susc) 0.92 (0.83-1.23); mean
    phi equal within noise (layers.3.mlp 0.076 vs 0.081). The same estimator, the same sampler.
    Time: 1.90x CPU same work, 2.94x without lit-susc's full run (layer-3 components 89 s vs 38 s
    CPU each, 2.4x; full 124 s vs 105 s).
  * what devinterp returns is another quantity: median Pearson with lit-susc -0.03 (default) and
    -0.22 (800 draws), while its own seed-to-seed agreement is 0.91 / 0.99: the centring term
    above, one full-run token profile times E_C[phi], is 15-2300x the covariance (median 540x /
    1800x), so its output is the same profile for every component (median Pearson between two
    components 0.999 / 1.000, lit-susc's 0.05 / 0.40). Its sign follows E_C[phi] and so the
    offset L(w*) - init_loss: with its default 32 init batches here init_loss = 4.814 > L_ref(w*)
    = 4.740 and a head's E_C[phi] < 0; with ``--devinterp-init-batches 1`` init_loss = 4.697 and
    every head's output flips sign (r with lit-susc +0.22 instead of -0.22 at 800 draws; and with
    one init batch, runs A and B use different first batches: their head outputs correlate -0.91
    at 60 draws, -0.99 at 800).
    Its float32 evaluation is not the problem: round-off is <= 4% of the covariance.
  Why the default median is below 0.8: chain noise, not a disagreement. Both tools' estimates of
  the exact covariance have seed-to-seed Pearson ~0.1-0.2 at 60 draws per component; every
  cross-tool Pearson is bounded by that ceiling, and reaches it. With 800 draws the ceiling is
  ~0.8 and the cross-tool median is at it. Comparing with devinterp's returned numbers instead
  gives |r| <= 0.3 of arbitrary sign at any number of draws, because they centre differently
  (above), not because of noise.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--components", default="layers.0.*,layers.3.*,unembed",
                    help="comma-separated glob patterns over layers.{l}.heads.{h}, layers.{l}.mlp, embed, unembed")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--burn-in", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=1000,
                    help="observation tokens (rounded up to whole batches of contexts of context-1 tokens)")
    ap.add_argument("--context", type=int, default=64, help="tokens per context")
    ap.add_argument("--batch", type=int, default=8, help="contexts per SGLD minibatch (and per observable batch)")
    ap.add_argument("--ref-batches", type=int, default=1, help="batches in the fixed reference batch (phi)")
    ap.add_argument("--sampling-contexts", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--nbeta", type=float, default=100.0)
    ap.add_argument("--localization", type=float, default=300.0)
    ap.add_argument("--devinterp-init-batches", type=int, default=None,
                    help="devinterp's num_init_loss_batches (default: devinterp's own, 32)")
    ap.add_argument("--lit-prefix-cache", choices=("on", "off"), default="on",
                    help="lit-susc's prefix-activation cache (its default: on; off runs every block at every step)")
    ap.add_argument("--lit-batch-chains", type=int, default=1,
                    help="lit-susc's compute.batch_chains: chains of a component stepped together (its default: 1)")
    ap.add_argument("--lit-observation-batch", type=int, default=32,
                    help="lit-susc's contexts per observation forward pass (its default, data.observation_batch_size: "
                         "32; devinterp evaluates observables in minibatches of --batch)")
    ap.add_argument("--lit-observation-dtype", choices=("float32", "bfloat16"), default="float32",
                    help="lit-susc's compute.observation_dtype (bfloat16: autocast on the per-draw observation pass)")
    ap.add_argument("--floor", nargs="*", default=["layers.0.heads.0", "layers.3.heads.0", "unembed"],
                    help="components whose work is also timed as a bare PyTorch loop (the floor; none: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0,
                    help="run A's seed (both tools); run B: lit-susc seed + 1, devinterp init_seed + chains")
    ap.add_argument("--no-second-seed", action="store_true", help="skip seed B (no self-agreement numbers)")
    ap.add_argument("--model-dir", default=None, help="a trained causal LM (default: train the tiny LM)")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "lit-susc-bench-devinterp"),
                    help="where the tiny LM is cached and devinterp's zarr outputs go (removed after each run)")
    ap.add_argument("--progress", action="store_true", help="show devinterp's per-chain progress bars")
    return ap


def pearson(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


class Clock:
    """Wall time and this process's CPU time (all its threads) since start; CPU time is what a busy,
    shared machine perturbs least (other processes' load shows in the wall time, not in it)."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def main() -> None:
    args = build_parser().parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if not args.progress:
        os.environ["TQDM_DISABLE"] = "1"  # devinterp's per-chain trange

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    try:
        import devinterp
        import devinterp.slt.sampling as di_sampling
        import devinterp.slt.susceptibilities as di_sus
        from datasets import Dataset
    except ImportError as e:
        raise SystemExit(f"bench_devinterp: cannot import devinterp ({e}); install it as the docstring says "
                         "(python benchmarks/bench_devinterp.py --help)") from e
    from importlib.metadata import version
    if version("devinterp") != "2.0.1":
        raise SystemExit(f"bench_devinterp: devinterp {version('devinterp')} found, this benchmark reads 2.0.1")

    import lightning as L

    from lit_susc import SGLDConfig, estimate_susceptibilities
    from lit_susc.components import resolve_components
    from lit_susc.config import ComputeConfig
    from lit_susc.lm import TextSource, per_token_loss, text_contexts
    from lit_susc.tinylm import TinyLMConfig, load_causal_lm, train_tiny_lm

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    # A devinterp chain that hits a NaN only warns ("Chain failed") and leaves zeros behind: make it fatal.
    warnings.filterwarnings("error", message="Chain failed")
    # Lightning's notes on the sampler being in eval mode (deliberate) and on its own pytree use.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, devinterp {version('devinterp')} ({Path(devinterp.__file__).parent}), "
          f"threads {torch.get_num_threads()}, python {sys.executable}", flush=True)

    # ---- model and data --------------------------------------------------------------------------
    t0 = time.perf_counter()
    if args.model_dir is None:
        context = max(64, args.context)
        model_dir = train_tiny_lm(work / f"tiny_lm_ctx{context}", TinyLMConfig(context_length=context, train_steps=200),
                                  progress=False, max_documents=400)
    else:
        model_dir = args.model_dir
    model, tokenizer = load_causal_lm(model_dir)
    if args.context > model.config.max_position_embeddings:
        raise SystemExit(f"bench_devinterp: --context {args.context} exceeds the model's "
                         f"max_position_embeddings {model.config.max_position_embeddings}")
    print(f"model {model_dir}: {sum(p.numel() for p in model.parameters()):,} parameters "
          f"({time.perf_counter() - t0:.0f} s to train or load)", flush=True)

    B, T = args.batch, args.context
    n_obs = math.ceil(math.ceil(args.tokens / (T - 1)) / B) * B
    n_ref = args.ref_batches * B
    source = TextSource(context_length=T)
    obs_ids = text_contexts(tokenizer, source, n_obs, skip=0).input_ids
    samp_ids = text_contexts(tokenizer, source, args.sampling_contexts, skip=n_obs).input_ids
    ref_ids = samp_ids[:n_ref]
    sampling_batches = [samp_ids[i:i + B] for i in range(0, len(samp_ids) - B + 1, B)]
    obs_batches = [obs_ids[i:i + args.lit_observation_batch] for i in range(0, n_obs, args.lit_observation_batch)]
    with torch.no_grad():
        ref_loss_star = float(per_token_loss(model, ref_ids).double().mean())
    print(f"data: {n_obs} observation contexts x {T - 1} = {n_obs * (T - 1)} tokens, reference batch {n_ref} contexts "
          f"(L_ref(w*) = {ref_loss_star:.4f}), {len(sampling_batches)} sampling batches of {B}", flush=True)

    patterns = [p.strip() for p in args.components.split(",") if p.strip()]
    components = resolve_components(model, patterns)
    if "full" in components:
        raise SystemExit("bench_devinterp: 'full' is reserved for the whole model")
    lit_components = {**components, "full": {n: None for n, _ in model.named_parameters()}}
    # devinterp: the same parameters and masks (materialized: it turns them into float tensors).
    dev_restrictions = {name: {p: (None if m is None else m.contiguous()) for p, m in comp.items()}
                        for name, comp in components.items()}
    dev_restrictions["full"] = None
    names = list(lit_components)
    print(f"components: {len(components)} + full ({', '.join(components)})", flush=True)

    def hf(ids):
        return Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")

    ds_sampling, ds_ref, ds_obs = hf(samp_ids), hf(ref_ids), hf(obs_ids)
    obs_seed = 1337
    # devinterp's observable rows are random.Random(obs_seed).sample(range(n), n) of the dataset.
    obs_perm = np.array(random.Random(obs_seed).sample(range(n_obs), n_obs))

    w_star = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def check_model_untouched(who: str) -> None:
        for k, v in model.state_dict().items():
            if not torch.equal(v, w_star[k]):
                raise RuntimeError(f"{who} left the model away from w* (parameter {k})")

    # ---- the two tools ---------------------------------------------------------------------------
    init_batches = ({} if args.devinterp_init_batches is None else {"num_init_loss_batches": args.devinterp_init_batches})

    def run_devinterp(seed: int, chains: int, draws: int, burn_in: int, restrictions: dict) -> dict:
        out_root = Path(tempfile.mkdtemp(prefix="devinterp-", dir=work))
        try:
            return devinterp_in(out_root, seed, chains, draws, burn_in, restrictions)
        finally:
            shutil.rmtree(out_root, ignore_errors=True)  # its zarr stores, read by now

    def devinterp_in(out_root: Path, seed: int, chains: int, draws: int, burn_in: int, restrictions: dict) -> dict:
        captured: dict[str, object] = {}
        wr_times: dict[str, tuple[float, float]] = {}
        init_times = [0.0, 0.0]
        original_sample, original_init_loss = di_sus.sample, di_sampling._write_init_loss

        def capturing_sample(*a, **kw):  # times each weight restriction and keeps its DataTree
            clock = Clock()
            tree = original_sample(*a, **kw)
            name = Path(str(kw["output_path"])).stem[len("samples_"):]
            wr_times[name], captured[name] = clock.read(), tree
            return tree

        def timed_init_loss(*a, **kw):  # devinterp's loss at w* on num_init_loss_batches per chain
            clock = Clock()
            original_init_loss(*a, **kw)
            wall, cpu = clock.read()
            init_times[0] += wall
            init_times[1] += cpu

        di_sus.sample, di_sampling._write_init_loss = capturing_sample, timed_init_loss
        try:
            clock = Clock()
            tree = di_sus.susceptibilities(
                model, ds_sampling, {"ref": (ds_ref, args.ref_batches), "probe": (ds_obs, n_obs // B)}, restrictions,
                sampling_task="ref", lr=args.lr, n_beta=args.nbeta, localization=args.localization,
                num_chains=chains, num_draws=draws, num_burnin_steps=burn_in, num_steps_bw_draws=1,
                batch_size=B, init_seed=seed, obs_seed=obs_seed,
                device="cpu", output_path=out_root / "samples.zarr", **init_batches,
            )
            wall, cpu = clock.read()
        finally:
            di_sus.sample, di_sampling._write_init_loss = original_sample, original_init_loss
        check_model_untouched("devinterp")

        # Returned chi, rows back in the original observation order.
        sus = tree["susceptibilities"].dataset
        ctx = tree["context"].dataset
        assert list(sus.attrs["dataset_id_to_name"]) == ["probe"], sus.attrs
        ids = ctx["input_ids"].values.reshape(n_obs, T)
        if not np.array_equal(ids, obs_ids.numpy()[obs_perm]):
            raise RuntimeError("devinterp's observation rows are not the expected permutation of ours")
        batch, pos = sus["batch"].values, sus["target_position"].values - 1
        raw = {}
        for wr in sus["wr"].values:
            grid = np.full((n_obs, T - 1), np.nan)
            grid[obs_perm[batch], pos] = sus["sus"].sel(wr=wr).values
            raw[str(wr)] = grid

        # Its draws: recompute its formula (a check of our reading) and the exact, own-run centring.
        def draws_of(wr):
            ds = captured[wr].dataset
            L_ = ds["loss_ref"].values.astype(np.float64).mean(axis=(-2, -1))  # (chain, draw)
            l = ds["loss_probe"].values.astype(np.float64)  # (chain, draw, batch, pos)
            order = np.empty(n_obs, int)
            order[obs_perm] = np.arange(n_obs)
            l = l[:, :, order]  # original row order
            return L_, l, float(ds["init_loss"].values.astype(np.float64).mean())

        L_full, l_full, init_full = draws_of("full")
        full_delta = L_full.mean() - l_full.mean(axis=(0, 1))
        recentred, mean_phi, reproduced, extra, f32_error = {}, {}, {}, {}, {}
        for wr in restrictions:
            L_, l, _ = draws_of(wr)
            phi = L_ - init_full
            e_phi = phi.mean()
            e_phi_L = (phi * L_).mean()
            e_phi_l = (phi[:, :, None, None] * l).mean(axis=(0, 1))
            reproduced[wr] = e_phi_L - e_phi_l - e_phi * full_delta
            d = l - L_[:, :, None, None]  # l_t - L
            dc = d - d.mean(axis=(0, 1))
            recentred[wr] = -((phi - e_phi)[:, :, None, None] * dc).mean(axis=(0, 1))  # -Cov(phi, l - L), 1/S
            extra[wr] = e_phi * ((l_full - L_full[:, :, None, None]).mean(axis=(0, 1)) - d.mean(axis=(0, 1)))
            mean_phi[wr] = float(L_.mean() - ref_loss_star)  # relative to L_ref(w*): LLC / nbeta
            if wr in raw:
                # devinterp evaluates this in float32 (phi = L - init_loss rounded at |L| ~ 5, terms of size
                # |phi| * loss cancelling): it differs from the float64 value by its round-off, which the
                # table reports; a misreading of the formula would be off by the size of the output itself.
                f32_error[wr] = float(np.abs(reproduced[wr] - raw[wr]).max())
                if f32_error[wr] > 1e-2 * np.abs(raw[wr]).max():
                    raise RuntimeError(f"our reading of devinterp's formula is off for {wr}: max error "
                                       f"{f32_error[wr]:.2e}, output scale {np.abs(raw[wr]).max():.2e}")
            # Exact algebra (float64): returned = recentred + centring term.
            np.testing.assert_allclose(reproduced[wr], recentred[wr] + extra[wr], rtol=0,
                                       atol=1e-9 * max(abs(e_phi_L), 1.0))
        return {"wall": wall, "cpu": cpu, "parts": wr_times, "init": tuple(init_times), "raw": raw,
                "recentred": recentred, "extra": extra, "mean_phi": mean_phi, "init_loss": init_full,
                "f32_error": f32_error}

    class UnitTimer(L.Callback):
        """(wall, CPU) time of the SGLD loop attributed to each component (batch end to batch end)."""

        def __init__(self) -> None:
            self.times: dict[str, tuple[float, float]] = {}
            self._clock: Clock | None = None
            self._last = (0.0, 0.0)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._clock, self._last = Clock(), (0.0, 0.0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = self._clock.read()
            # One step of a group of chains (compute.batch_chains of one component); older sampler: one chain.
            chains = [c for c in (outputs.get("chains", [outputs])) if c["unit"] is not None]
            for c in chains:
                wall, cpu = self.times.get(c["unit"].component, (0.0, 0.0))
                self.times[c["unit"].component] = (wall + (now[0] - self._last[0]) / len(chains),
                                                   cpu + (now[1] - self._last[1]) / len(chains))
            self._last = now

    def run_lit(seed: int, chains: int, draws: int, burn_in: int, comps: dict) -> dict:
        timer = UnitTimer()
        sgld = SGLDConfig(lr=args.lr, nbeta=args.nbeta, localization=args.localization, chains=chains, draws=draws,
                          burn_in=burn_in, steps_between_draws=1, seed=seed, sampler="sgld", convention="baker")
        clock = Clock()
        res = estimate_susceptibilities(
            model, per_token_loss, sampling_batches, obs_batches, components=comps, sgld=sgld,
            trainer={"accelerator": "cpu", "enable_progress_bar": False, "callbacks": [timer]},
            reference_data=ref_ids, compute=ComputeConfig(prefix_cache=args.lit_prefix_cache == "on",
                                                         batch_chains=args.lit_batch_chains,
                                                         observation_dtype=args.lit_observation_dtype),
        )
        wall, cpu = clock.read()
        check_model_untouched("lit-susc")
        chi = res.in_convention("baker").numpy()
        return {"wall": wall, "cpu": cpu, "parts": timer.times,
                "chi": {n: chi[i] for i, n in enumerate(res.components)},
                "mean_phi": {n: res.llc[n]["mean"] / args.nbeta for n in res.components}}

    def run_plain(name: str, chains: int, draws: int, burn_in: int) -> float:
        """CPU seconds of a bare PyTorch loop doing one component's passes with no cache, no Lightning, no
        callbacks: per chain, every step a forward+backward of a minibatch and a masked update, every draw
        the reference and observation forward passes. The floor both tools pay for this component's work
        unless they skip part of the model."""
        params = dict(model.named_parameters())
        comp = lit_components[name]
        flags = {n: p.requires_grad for n, p in params.items()}
        for n, p in params.items():
            p.requires_grad_(n in comp)
        clock = Clock()
        try:
            for _ in range(chains):
                for step in range(burn_in + draws):
                    loss = per_token_loss(model, sampling_batches[step % len(sampling_batches)]).mean()
                    loss.backward()
                    with torch.no_grad():
                        for n, mask in comp.items():
                            p = params[n]
                            p.add_(-0.5 * args.lr * args.nbeta * p.grad * (1.0 if mask is None else mask))
                            p.grad = None
                    if step >= burn_in:
                        with torch.no_grad():
                            per_token_loss(model, ref_ids).double().mean()
                            for b in obs_batches:
                                per_token_loss(model, b).double()
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(w_star[n])
                    p.requires_grad_(flags[n])
        return clock.read()[1]

    # ---- warm-up (not timed), then the timed runs -------------------------------------------------
    first = names[0]
    t = time.perf_counter()
    run_devinterp(args.seed + 1000, 1, 3, 0, {first: dev_restrictions[first], "full": None})
    run_lit(args.seed + 1000, 1, 3, 0, {first: lit_components[first], "full": lit_components["full"]})
    print(f"warm-up of both tools (not timed): {time.perf_counter() - t:.1f} s", flush=True)

    # devinterp seeds chain k with init_seed + k (noise) and every chain's minibatch order with init_seed:
    # its seed B must be init_seed + chains, or B's chain k would replay A's chain k + 1 noise for noise.
    seeds = {"A": (args.seed, args.seed)}
    if not args.no_second_seed:
        seeds["B"] = (args.seed + 1, args.seed + args.chains)
    dev, lit = {}, {}
    for s, (lit_seed, dev_seed) in seeds.items():
        dev[s] = run_devinterp(dev_seed, args.chains, args.draws, args.burn_in, dev_restrictions)
        print(f"devinterp run {s} (init_seed {dev_seed}): {dev[s]['wall']:.1f} s wall, {dev[s]['cpu']:.1f} s CPU "
              f"(full: {dev[s]['parts']['full'][0]:.1f} s wall; init loss: {dev[s]['init'][0]:.1f} s wall)", flush=True)
        lit[s] = run_lit(lit_seed, args.chains, args.draws, args.burn_in, lit_components)
        print(f"lit-susc  run {s} (seed {lit_seed}): {lit[s]['wall']:.1f} s wall, {lit[s]['cpu']:.1f} s CPU "
              f"(full: {lit[s]['parts']['full'][0]:.1f} s wall)", flush=True)

    # ---- agreement --------------------------------------------------------------------------------
    A = "A"
    Bs = "B" if "B" in seeds else None
    rows = []
    for name in names:
        la, da = lit[A]["chi"][name], dev[A]["recentred"][name]
        row = {
            "name": name,
            "phi_lit": lit[A]["mean_phi"][name], "phi_dev": dev[A]["mean_phi"][name],
            "r_rc": pearson(la, da),
            "r_raw": pearson(la, dev[A]["raw"][name]) if name in dev[A]["raw"] else float("nan"),
            "scale": float(np.std(da) / np.std(la)),
            "t_dev": dev[A]["parts"][name][1], "t_lit": lit[A]["parts"][name][1],
            "extra_ratio": float(np.std(dev[A]["extra"][name]) / np.std(da)) if name != "full" else 0.0,
            "f32": dev[A]["f32_error"].get(name, float("nan")) / float(np.std(da)),
        }
        if Bs is not None:
            lb, db = lit[Bs]["chi"][name], dev[Bs]["recentred"][name]
            row["self_lit"] = pearson(la, lb)
            row["self_dev"] = pearson(da, db)
            row["self_raw"] = pearson(dev[A]["raw"][name], dev[Bs]["raw"][name]) if name in dev[A]["raw"] else float("nan")
            row["r_rc_B"] = pearson(lb, db)
            row["r_avg"] = pearson(la + lb, da + db)
            ceiling = math.sqrt(max(row["self_lit"], 0) * max(row["self_dev"], 0))
            row["r_norm"] = 0.5 * (row["r_rc"] + row["r_rc_B"]) / ceiling if ceiling > 0 else float("nan")
        rows.append(row)

    # ---- report -------------------------------------------------------------------------------------
    print("\nPer component (Pearson across the observation tokens; chi in the baker convention, -Cov(phi, l - L)):")
    print("  r(lit,dev rc)  lit-susc vs devinterp's draws recentred on their own run (exact -Cov): apples to apples")
    print("  r(lit,dev raw) lit-susc vs what devinterp's susceptibilities() returns (centred with the full run)")
    print("  self lit/dev/raw  seed A vs seed B of the same tool (the noise ceiling); r(avg) averages both seeds;")
    print("  r/ceil = mean over seeds of r(lit,dev rc) / sqrt(self lit * self dev); std dev/lit = scale of dev rc vs lit;")
    print("  |extra|/|cov| = std of devinterp's centring term over std of the exact covariance;")
    print("  f32 err/|cov| = max |devinterp's returned value - its formula in float64| over std of the exact covariance;")
    print("  E[phi] = mean L_ref(w_s) - L_ref(w*) over draws (LLC / nbeta), lit-susc and devinterp;")
    print("  dev/lit cpu s = run A's CPU time for that restriction (devinterp: its sample() call; lit-susc: its chains)\n")
    cols = [("component", "name", "{:<18}"), ("E[phi] lit", "phi_lit", "{:>10.4f}"), ("E[phi] dev", "phi_dev", "{:>10.4f}"),
            ("r(lit,dev rc)", "r_rc", "{:>13.3f}"), ("r(lit,dev raw)", "r_raw", "{:>14.3f}")]
    if Bs is not None:
        cols += [("r rc seed B", "r_rc_B", "{:>11.3f}"), ("self lit", "self_lit", "{:>8.3f}"),
                 ("self dev", "self_dev", "{:>8.3f}"), ("self raw", "self_raw", "{:>8.3f}"),
                 ("r(avg)", "r_avg", "{:>6.3f}"), ("r/ceil", "r_norm", "{:>6.2f}")]
    cols += [("std dev/lit", "scale", "{:>11.2f}"), ("|extra|/|cov|", "extra_ratio", "{:>13.1f}"),
             ("f32 err/|cov|", "f32", "{:>13.3f}"),
             ("dev cpu s", "t_dev", "{:>9.1f}"), ("lit cpu s", "t_lit", "{:>9.1f}")]
    widths = [len(fmt.format(rows[0][key])) for _, key, fmt in cols]
    print("  ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, ((h, _, _), w) in enumerate(zip(cols, widths))))
    for row in rows:
        print("  ".join(fmt.format(row[key]) for _, key, fmt in cols))
    restricted = [r for r in rows if r["name"] != "full"]
    med = {key: float(np.nanmedian([r[key] for r in restricted])) for _, key, _ in cols[1:]}
    med["name"] = "median (no full)"
    print("  ".join(fmt.format(med[key]) for _, key, fmt in cols))

    # If chi were the same token profile for every component, these would be near 1.
    pairs = [(a, b) for i, a in enumerate(names[:-1]) for b in names[i + 1:-1]]
    if pairs:
        def between(chis) -> float:
            return float(np.median([pearson(chis[a], chis[b]) for a, b in pairs]))
        print(f"\nMedian Pearson between two different components (run A): lit-susc {between(lit[A]['chi']):.3f}, "
              f"devinterp recentred {between(dev[A]['recentred']):.3f}, devinterp raw {between(dev[A]['raw']):.3f}")

    n_units_steps = len(names) * args.chains * (args.burn_in + args.draws)
    print(f"\nTime (threads={args.threads}; warm-up excluded; {len(names)} restrictions incl. full x "
          f"{args.chains} chains x ({args.burn_in} burn-in + {args.draws} draws) = {n_units_steps} SGLD steps and "
          f"{len(names) * args.chains * args.draws} draws per tool and run). Ratios devinterp / lit-susc:")
    print("  same work: both whole calls; lit w/o full: lit-susc without its full-model chains, which it does not "
          "need;\n  dev w/o init: devinterp without its init-loss pass (num_init_loss_batches per chain and restriction)")
    head = (f"{'run':>4} {'clock':>5}  {'devinterp s':>11}  {'lit-susc s':>10}  {'same work':>9}  {'lit w/o full':>12}  "
            f"{'dev w/o init':>12}")
    print(head)
    ratios: dict[str, list[float]] = {}
    for s in seeds:
        for k, clock in enumerate(("wall", "cpu")):
            d, l_ = dev[s][clock], lit[s][clock]
            r = (d / l_, d / (l_ - lit[s]["parts"]["full"][k]), (d - dev[s]["init"][k]) / l_)
            for key, value in zip(("same", "nofull", "noinit"), r):
                ratios.setdefault(f"{clock}_{key}", []).append(value)
            print(f"{s:>4} {clock:>5}  {d:>11.1f}  {l_:>10.1f}  {r[0]:>9.2f}  {r[1]:>12.2f}  {r[2]:>12.2f}")
    mean = {k: statistics.mean(v) for k, v in ratios.items()}
    floor = {name: run_plain(name, args.chains, args.draws, args.burn_in) for name in args.floor}
    if floor:
        print("\nThe floor: a bare PyTorch loop of the same passes for one component (CPU s; no cache, no "
              "Lightning, no callbacks), against each tool's time for that component in run A:")
        for name, t in floor.items():
            d, l_ = dev[A]["parts"][name][1], lit[A]["parts"][name][1]
            print(f"  {name:<18} bare loop {t:6.1f} s   devinterp {d:6.1f} s ({d / t:.2f}x the floor)   "
                  f"lit-susc {l_:6.1f} s ({l_ / t:.2f}x the floor)")

    print(f"\nSUMMARY  devinterp/lit-susc, same work: {mean['wall_same']:.2f}x wall, {mean['cpu_same']:.2f}x CPU "
          f"(lit-susc without the full run: {mean['wall_nofull']:.2f}x wall, {mean['cpu_nofull']:.2f}x CPU); "
          f"median Pearson r(lit, dev rc) = {med['r_rc']:.3f}, r(lit, dev raw) = {med['r_raw']:.3f}"
          + (f"; self-agreement lit-susc {med['self_lit']:.3f}, devinterp {med['self_dev']:.3f} "
             f"(raw {med['self_raw']:.3f}); r(avg of 2 seeds) {med['r_avg']:.3f}; r/ceiling {med['r_norm']:.2f}"
             if Bs is not None else ""))
    print("devinterp's phi = L(w_s) - init_loss, init_loss = "
          + ", ".join(f"{dev[s]['init_loss']:.4f} (run {s})" for s in seeds)
          + f", against L_ref(w*) = {ref_loss_star:.4f} on the reference batch")


if __name__ == "__main__":
    main()
