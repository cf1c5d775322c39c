"""GPU benchmark of the device engine (batched_gw): pairs/s, achieved TFLOP/s, phases, values
against the CPU solver and against POT on the same GPU, and all pairs of an 80-layer model.

One prepared call on a bare GPU machine with CUDA torch, numpy, scipy and numba (POT as a wheel
for the anchor rows; they are skipped without it), about 5 minutes:

    python bench/gpu.py [--json OUT.json]

Steps (each prints as it finishes, and a failing step is reported and skipped):

0. the auction kernel's warps per program, timed on cold assignment problems (the fastest is used);
1. for each n in ``--sizes`` (1,024 / 2,048 / 4,096 on a GPU): one device batch of the 66 layer
   pairs of a 12-layer random residual tanh MLP (cost matrices built on the device) — pairs/s,
   matmul TFLOP/s (FLOPs of every bmm/baddbmm the engine calls / wall) against the TF32 peak
   and against a plain bmm measured now, peak device memory, host reads, and the engine's
   counters (linear steps per pair, auction bids per linear step, device ops per batch); at the
   smallest n, ``--check`` pairs solved by the serial CPU solver (value ratio; target ≤ 1.01);
2. where the time goes: the same batch at ``--phase-n`` with a device sync around each phase;
3. POT on the same GPU (torch CUDA tensors): CG with its default and with the mixed start, and
   entropic GW (ε = 1e-3), on ``--pot`` pairs at n = 2,048, next to ours on the same pairs;
4. all L (L − 1) / 2 pairs of ``--layers`` (80) layers at ``--full-n`` (2,048), with progress
   per batch; stops after ``--budget`` seconds and reports the rate (target: 3,160 pairs ≤ 60 s).

``--device cpu`` runs the same steps anywhere at small sizes (the kernels' host twins) and adds a
modelled H200 time: the dispatched operations, the auction's critical path (the most bids of a
problem in each launch) and the matmul FLOPs, priced with the constants below. It runs the
portfolio of the modelled sizes (n ≥ 1,024: the default starts without random ones, which
``random:auto`` adds only below 1,024), so that the counts it extrapolates are of that work.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections import defaultdict

import numpy as np
import torch

from gwray.gw import batched, device_assignment, device_portfolio
from gwray.gw.batched import batched_gw, device_costs, plan_batch
from gwray.gw.solver import gromov_wasserstein
from gwray.gw.starts import DEFAULT_STARTS, expand_auto

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_model import Counters, extrapolate  # noqa: E402

# Dense TF32 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TF32 = {"H200": 494.7, "H100 SXM": 494.7, "H100 PCIe": 378.0, "H100": 494.7, "A100": 156.0,
             "L40S": 183.0, "A10": 62.5, "L4": 60.0}
H200_MEMORY = 141e9  # bytes: the device batches the model assumes (plan_batch on a bare H200)


def layer_activations(n: int, layers: int, device, width: int = 256, seed: int = 0):
    """(n, width) activations of ``layers`` layers of a random residual tanh MLP, on ``device``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, width, generator=g).to(device)
    out = [x]
    for _ in range(layers - 1):
        W = torch.randn(width, width, generator=g).to(device) * (1.5 / math.sqrt(width))
        x = x + torch.tanh(x @ W)
        out.append(x)
    return out


def pair_list(layers: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(layers) for j in range(i + 1, layers)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_starts(device) -> tuple:
    """The starts the bench runs: the default on a GPU; on a CPU the default's at the modelled
    sizes (n ≥ 1,024)."""
    return DEFAULT_STARTS if device.type == "cuda" else tuple(expand_auto(list(DEFAULT_STARTS), 1024))


def solve(stack, pairs, device, batch=None):
    """All ``pairs`` of the layer stack in device batches; (results, wall s, Counters, reads)."""
    reads = batched.HOST_READS["count"]
    sync(device)
    t = time.perf_counter()
    with Counters() as c:
        res = batched_gw(stack, stack, pairs=np.asarray(pairs), keep_coupling=False,
                         batch_size=batch, starts=bench_starts(device))
    sync(device)
    return res, time.perf_counter() - t, c, batched.HOST_READS["count"] - reads


def matmul_rate(n: int, B: int, device) -> float:
    """TFLOP/s of a plain float32 (TF32, as the engine's search) batched matmul of the engine's
    shape, measured now."""
    torch.backends.cuda.matmul.allow_tf32 = True
    a = torch.randn(B, n, n, device=device)
    torch.bmm(a, a)
    sync(device)
    t, reps = time.perf_counter(), 3
    for _ in range(reps):
        torch.bmm(a, a)
    sync(device)
    return reps * 2 * B * n ** 3 / (time.perf_counter() - t) / 1e12


def step_warps(device, n: int, report: dict) -> None:
    """Time the auction kernel's warps per program on cold problems (identity-start gradients)."""
    from gwray.gw import auction_kernel

    C = device_costs(layer_activations(n, 12, device), device).float()
    P = min(264, 66 * 4)
    pairs = (pair_list(12) * 4)[:P]
    A = torch.stack([C[i] @ C[j] / n for i, j in pairs])
    row = {}
    for warps in (2, 4, 8, 16):
        auction_kernel.WARPS = warps
        sync(device)
        t = time.perf_counter()
        _, _, _, bids = device_assignment.auction(A, 1e-5)
        sync(device)
        s = time.perf_counter() - t
        row[warps] = {"s": s, "bids": int(bids.sum()), "max_bids": int(bids.max())}
        print(f"  auction, {P} cold problems at n={n}, {warps:2d} warps: {s:6.3f} s, "
              f"{int(bids.sum()) / s / 1e6:6.2f} M bids/s, most bids {int(bids.max())} "
              f"({s / int(bids.max()) * 1e6:.2f} us per bid on the critical path)", flush=True)
    auction_kernel.WARPS = min(row, key=lambda w: row[w]["s"])
    print(f"  using {auction_kernel.WARPS} warps per program")
    report["warps"] = row


def step_sizes(device, sizes, args, report: dict, peak) -> None:
    gpu = device.type == "cuda"
    print(f"{'n':>6} {'pairs':>6} {'s':>8} {'pairs/s':>8} {'TFLOP/s':>8} {'of peak':>8} {'of bmm':>7} "
          f"{'GiB':>6} {'reads':>6} {'steps':>6} {'bids/st':>8} {'ops':>7}"
          + ("" if gpu else f" {'model s':>8} {'model p/s':>9}"), flush=True)
    for n in sizes:
        stack = device_costs(layer_activations(n, 12, device), device)
        pairs = pair_list(12)[:min(args.pairs or 66, plan_batch(n, n, device))]
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        res, wall, c, reads = solve(stack, pairs, device, len(pairs))
        mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if gpu else float("nan")
        tflops = c.total_flops / wall / 1e12
        mm = matmul_rate(n, min(len(pairs), 16), device)
        steps = np.mean([r.linear_steps for r in res])
        bids = np.mean([r.rounds for r in res])
        ops = res[0].device_ops
        of_peak = f"{tflops / peak:8.1%}" if peak else f"{'n/a':>8}"
        row = {"n": n, "pairs": len(pairs), "s": wall, "pairs_per_s": len(pairs) / wall,
               "tflops": tflops, "bmm_tflops": mm, "peak_gib": mem, "reads": reads,
               "linear_steps": steps, "bids_per_step": bids, "device_ops": ops}
        line = (f"{n:>6} {len(pairs):>6} {wall:8.2f} {len(pairs) / wall:8.2f} {tflops:8.2f} {of_peak} "
                f"{tflops / mm:7.1%} {mem:6.2f} {reads:>6} {steps:6.1f} {bids:8.0f} {ops:>7}")
        if not gpu:
            row["parts"], row["model_s"], row["launches"] = c.parts(), c.seconds(), c.launches()
            line += f" {row['model_s']:8.2f} {len(pairs) / row['model_s']:9.1f}"
        print(line, flush=True)
        report.setdefault("sizes", []).append(row)
        if n == sizes[0] and args.check:
            ratios = []
            for (a, b), r in zip(pairs[:args.check], res):
                ref = gromov_wasserstein(stack[a].cpu().numpy(), stack[b].cpu().numpy(), aligned=True,
                                         keep_coupling=False, starts=bench_starts(device))
                ratios.append(r.value / ref.value if ref.value > 0 else 1.0)
            ok = all(r.lower_bound <= r.value for r in res)
            print(f"       values vs CPU solver, {len(ratios)} pairs at n={n}: ratio min {min(ratios):.4f} "
                  f"max {max(ratios):.4f} (target <= 1.01); lower bound <= value on all {len(res)}: {ok}",
                  flush=True)
            report["check"] = {"n": n, "ratios": ratios, "bound_ok": ok}
        del stack


def step_ops(device, sizes, report: dict) -> None:
    """Dispatched device operations per batch (torch ops, a kernel launch counting as one) for
    B = 1, 8 and 64 pairs (the bench's first B): they should not grow with B."""
    for n in sizes:
        stack = device_costs(layer_activations(n, 12, device), device)
        ops = {}
        for B in (1, 8, 64):
            res, wall, _, _ = solve(stack, (pair_list(12) * 2)[:B], device, B)
            ops[B] = res[0].device_ops
        print(f"  ops per batch at n={n}: B=1 {ops[1]}, B=8 {ops[8]}, B=64 {ops[64]} "
              f"(B=64 / B=1 = {ops[64] / ops[1]:.2f})", flush=True)
        report.setdefault("ops", {})[n] = ops


def step_model(report: dict, sizes, layers: int) -> None:
    """The CPU mode's modelled H200 time for all pairs of ``layers`` layers at each n of
    ``sizes`` (from the two largest sizes of step 1; bench/gpu_model.py says what is counted and
    assumed)."""
    pairs = layers * (layers - 1) // 2
    for n in sizes:
        batch = plan_batch(n, n, "cuda", budget_bytes=int(0.7 * H200_MEMORY) - (2 << 30))
        est = extrapolate(report["sizes"], n, pairs, batch, layers)
        total = sum(v for k, v in est.items() if not k.endswith("exponent"))
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in est.items() if not k.endswith("exponent"))
        print(f"== modelled H200 time, {pairs} pairs of {layers} layers at n={n} (device batches of "
              f"{batch}): {total:.1f} s, {pairs / total:.0f} pairs/s ({parts}; bids per pair grow as "
              f"n^{est['bids exponent']:.2f}, the longest problem's as n^{est['longest problem exponent']:.2f} "
              f"here)", flush=True)
        report.setdefault("model", {})[n] = {"pairs": pairs, "batch": batch, "seconds": total, **est}


def step_phases(device, n: int, B: int, report: dict) -> None:
    """One batch with a device sync around each phase; nested phases are reported net."""
    import gwray.gw.device_cg as dcg
    import gwray.gw.device_local_search as dls

    spent, calls, stack_ = defaultdict(float), defaultdict(int), []
    wrapped = [(device_portfolio, "start_state", "starts"), (device_portfolio, "cg", "CG (less auction)"),
               (dcg, "auction", "auction (CG linear steps)"), (device_portfolio, "exact_ends", "exact values"),
               (device_portfolio, "swap_search", "swap search"), (device_portfolio, "_lower_bound", "bound"),
               (batched, "LayerData", "layer data (sorted rows, spectra)")]
    saved = [(m, a, getattr(m, a)) for m, a, _ in wrapped]

    def timed(f, label):
        def g(*a, **k):
            sync(device)
            t = time.perf_counter()
            stack_.append(0.0)
            try:
                return f(*a, **k)
            finally:
                sync(device)
                total, inner = time.perf_counter() - t, stack_.pop()
                spent[label] += total - inner
                calls[label] += 1
                if stack_:
                    stack_[-1] += total
        return g

    for m, a, label in wrapped:
        setattr(m, a, timed(getattr(m, a), label))
    try:
        stack = device_costs(layer_activations(n, 12, device), device)
        _, wall, _, reads = solve(stack, pair_list(12)[:B], device, B)
    finally:
        for m, a, f in saved:
            setattr(m, a, f)
    print(f"== phases at n={n}, {B} pairs: wall {wall:.2f} s (synced), host reads {reads}", flush=True)
    for label, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:36s} {s:7.2f} s  {calls[label]:4d} calls")
    print(f"  {'other':36s} {wall - sum(spent.values()):7.2f} s")
    report["phases"] = {"n": n, "pairs": B, "wall": wall, "phases": dict(spent)}
    del dls


def step_pot(device, n: int, K: int, budget: float, report: dict) -> None:
    """POT's CG (default and mixed starts) and entropic GW on torch tensors of ``device``."""
    import ot

    stack = device_costs(layer_activations(n, 12, device), device)
    pairs = pair_list(12)[:K]
    ours, wall, _, _ = solve(stack, pairs, device, K)
    p = torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    mixed = 0.5 * torch.eye(n, dtype=torch.float64, device=device) / n + 0.5 * torch.outer(p, p)
    methods = {"CG default": lambda a, b: ot.gromov.gromov_wasserstein(a, b, p, p, "square_loss"),
               "CG mixed": lambda a, b: ot.gromov.gromov_wasserstein(a, b, p, p, "square_loss", G0=mixed),
               "entropic 1e-3": lambda a, b: ot.gromov.entropic_gromov_wasserstein(
                   a, b, p, p, "square_loss", epsilon=1e-3, max_iter=200)}
    print(f"== POT {ot.__version__} on {device}, n={n}: gwray {wall / K:.3f} s/pair ({K} pairs in one batch)")
    rows = {}
    for name, fn in methods.items():
        vals, secs = [], []
        for a, b in pairs:
            if sum(secs) > budget:
                break
            sync(device)
            t = time.perf_counter()
            T = fn(stack[a], stack[b])
            sync(device)
            secs.append(time.perf_counter() - t)
            constC, h1, h2 = ot.gromov.init_matrix(stack[a], stack[b], p, p, "square_loss")
            vals.append(float(ot.gromov.gwloss(constC, h1, h2, T)))
        ratio = [ours[k].value / v for k, v in enumerate(vals)]
        rows[name] = {"s_per_pair": float(np.mean(secs)), "values": vals, "ours_over_theirs": ratio}
        print(f"  POT {name:14s} {np.mean(secs):7.3f} s/pair on {len(vals)} pairs: ours {np.mean(secs) / (wall / K):7.1f}x "
              f"faster; ours/theirs median {np.median(ratio):.4f}, above theirs on "
              f"{sum(r > 1 + 1e-9 for r in ratio)}/{len(ratio)}", flush=True)
    report["pot"] = {"n": n, "pairs": K, "ours_s_per_pair": wall / K, "methods": rows}


def step_layers(device, L: int, n: int, budget: float, report: dict) -> None:
    stack = device_costs(layer_activations(n, L, device), device)
    pairs, batch = pair_list(L), plan_batch(n, n, device)
    print(f"== all {len(pairs)} pairs of {L} layers at n={n}, batches of {batch} (budget {budget:.0f} s)",
          flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done, t0, bad, values = 0, time.perf_counter(), 0, []
    for lo in range(0, len(pairs), batch):
        res, _, _, _ = solve(stack, pairs[lo:lo + batch], device, batch)
        done += len(res)
        bad += sum(not (r.lower_bound <= r.value) for r in res)
        values += [r.value for r in res]
        s = time.perf_counter() - t0
        print(f"  {done:5d}/{len(pairs)} pairs, {s:7.1f} s, {done / s:7.1f} pairs/s, "
              f"all at this rate {len(pairs) / (done / s):7.1f} s", flush=True)
        if s > budget and done < len(pairs):  # noqa: SIM102
            print("  budget spent: stopping (the rate above is the figure)")
            break
    s = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    print(f"  {done} pairs in {s:.1f} s ({done / s:.1f} pairs/s; all {len(pairs)}: {len(pairs) / (done / s):.1f} s, "
          f"target <= 60 s), peak {mem:.1f} GiB, lower bound > value on {bad}, mean GW {np.mean(values):.5f}",
          flush=True)
    report["layers"] = {"L": L, "n": n, "pairs": done, "s": s, "pairs_per_s": done / s, "peak_gib": mem,
                        "bound_violations": bad}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--pairs", type=int, default=None, help="pairs per size (default: one batch)")
    ap.add_argument("--check", type=int, default=None, help="pairs checked against the CPU solver")
    ap.add_argument("--phase-n", type=int, default=None)
    ap.add_argument("--pot", type=int, default=None, help="pairs for the POT rows (0: skip)")
    ap.add_argument("--layers", type=int, default=None, help="all pairs of this many layers")
    ap.add_argument("--full-n", type=int, default=2048)
    ap.add_argument("--budget", type=float, default=150.0, help="seconds for step 4")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    sizes = args.sizes or ([1024, 2048, 4096] if gpu else [256, 512])
    args.check = args.check if args.check is not None else (3 if gpu else 2)
    if not gpu:
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    peak = next((v for k, v in PEAK_TF32.items() if k in name), None)
    print(f"device {name}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}; starts "
          f"{', '.join(bench_starts(device))}", flush=True)
    report = {"device": name, "torch": torch.__version__}
    t = time.perf_counter()
    warm = device_costs(layer_activations(64, 3, device), device)  # CUDA context, kernel compiles
    batched_gw(warm, warm, pairs=np.array([(0, 1), (1, 2)]), keep_coupling=False)
    print(f"start-up (context, kernel compiles): {time.perf_counter() - t:.1f} s", flush=True)
    steps = [("sizes", lambda: step_sizes(device, sizes, args, report, peak)),
             ("phases", lambda: step_phases(device, args.phase_n or (2048 if gpu else 256), 16 if gpu else 8, report)),
             ("pot", lambda: step_pot(device, 2048 if gpu else 256, args.pot if args.pot is not None else 4, 30.0, report)),
             ("layers", lambda: step_layers(device, args.layers if args.layers is not None else (80 if gpu else 0),
                                            args.full_n, args.budget, report))]
    if gpu:
        steps.insert(0, ("warps", lambda: step_warps(device, 2048, report)))
    else:
        steps[1:1] = [("model", lambda: step_model(report, [1024, 2048, 4096], args.layers or 80)),
                      ("ops", lambda: step_ops(device, [sizes[0]], report))]
    for label, fn in steps:
        if label == "layers" and not (args.layers if args.layers is not None else gpu):
            continue
        if label == "pot" and args.pot == 0:
            continue
        try:
            fn()
        except Exception:  # a failing step is reported; the others still run
            print(f"== step {label} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1, default=float)


if __name__ == "__main__":
    main()
