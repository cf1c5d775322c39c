"""What the device engine asks of a GPU, counted on any device, and its time on an H200 modelled
from those counts (``bench/gpu.py``; on a GPU only the FLOPs are used, for TFLOP/s).

Counted while a :class:`Counters` is active: every torch operation dispatched outside a custom
kernel (a view, or a launch with its memory traffic: its outputs, and its inputs up to the
output's size unless it reduces them), the FLOPs of every bmm/baddbmm (float32 runs as TF32 on
the device; float64), each auction launch's bids per problem, and the memory traffic of the
other kernels (swap search, gather, Sinkhorn half-sweeps). The model prices them with :data:`H200`:

    launches × max(launch latency, traffic / bandwidth) + views × dispatch time
    + TF32 FLOPs / TF32 rate + FP64 FLOPs / FP64 rate
    + Σ auction launches max(Σ bids / concurrent programs, most bids of a problem) × s per bid
    + swap kernels' traffic / bandwidth.
"""
from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gwray.gw import device_assignment, device_entropic, device_local_search
from gwray.gw.device_assignment import KERNEL_LAUNCHES

# Measured on H200s by this workplace (copy bandwidth counting read + write: 4.3 TB/s; the
# issue's old engine: 472k dispatched ops in 7.3 s, ~15 us each, syncs included), data-sheet
# rates at ~65 % (TF32 dense 495, FP64 tensor 67 TFLOP/s), and two assumptions to be measured
# by bench/gpu.py's step 0: ~1.5 us per auction bid on a problem's critical path (one row load
# and four block reductions), two programs per SM at n > 1,024 (four below) on 132 SMs.
H200 = {"launch_s": 15e-6, "view_s": 2e-6, "bandwidth": 4.3e12, "tf32_flops": 320e12,
        "fp64_flops": 44e12, "bid_s": 1.5e-6, "sms": 132, "eigh_2048_s": 0.04}
"""... and a float64 symmetric eigenvalue problem of n = 2,048 (cuSOLVER's syevd, scaled as n³):
~40 ms, a lead from published cuSOLVER timings, to be measured."""
_REDUCE = ("sum", "amax", "amin", "aminmax", "max", "min", "any", "all", "sort", "argsort", "nonzero",
           "norm", "mean", "topk")


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


class Counters(TorchDispatchMode):
    """The counts above, while active (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.ops = self.views = 0
        self.eigh = 0.0  # modelled seconds of the layers' spectra
        self.launch_s = 0.0  # Σ max(latency, traffic / bandwidth) over the launching ops
        self.flops = {torch.float32: 0, torch.float64: 0}
        self.auctions, self.swap_bytes, self.kernel_bytes = [], 0.0, 0.0
        self._run = device_assignment._run
        self._best, self._round = device_local_search.best_swaps, device_local_search.swap_round
        self._gather, self._sweep = device_local_search.permuted_into, device_entropic._half_sweep

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if KERNEL_LAUNCHES["inside"]:  # a twin standing in for a kernel: counted as that kernel
            return out
        self.ops += 1
        outs, name = _tensors(out), func.__name__
        if outs and all(t._is_view() for t in outs):
            self.views += 1
        elif name.startswith(("linalg_eigh", "_linalg_eigh")):
            A = args[0]
            self.eigh += A.numel() // A.shape[-1] ** 2 * H200["eigh_2048_s"] * (A.shape[-1] / 2048) ** 3
        elif name.startswith(("bmm", "baddbmm")):
            a, b = (args[0], args[1]) if name.startswith("bmm") else (args[1], args[2])
            self.flops[a.dtype] = self.flops.get(a.dtype, 0) + 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        else:
            ob = sum(t.numel() * t.element_size() for t in outs)
            reduces = name.startswith(_REDUCE)
            ib = sum(t.numel() * t.element_size() if reduces else min(t.numel() * t.element_size(), ob)
                     for t in _tensors(list(args)))
            self.launch_s += max(H200["launch_s"], (ob + ib) / H200["bandwidth"])
        return out

    def __enter__(self):
        def run(A, prices, cols, lo, hi, params, warm, active, max_bids):
            bids, done = self._run(A, prices, cols, lo, hi, params, warm, active, max_bids)
            self.auctions.append((A.shape[1], bids.clone(), active.clone()))  # read later: no sync
            return bids, done

        def best(C1, W, C2s, gain, partner):
            self.swap_bytes += 16.0 * C1.shape[0] * C1.shape[1] ** 2  # W, Wᵀ, C1, C2s read once
            return self._best(C1, W, C2s, gain, partner)

        def round_(P, gain, partner, k, cols, Q, active, changed):
            # float64 rows of C1 and two gathered rows of C2 per moved position (at most n/4)
            self.swap_bytes += 6.0 * cols.shape[0] * cols.shape[1] ** 2
            return self._round(P, gain, partner, k, cols, Q, active, changed)

        def gather(C, layer, cols, out):
            self.kernel_bytes += 2.0 * out.numel() * out.element_size()  # gathered reads, writes
            return self._gather(C, layer, cols, out)

        def sweep(E, other, log_w, rows):
            self.kernel_bytes += float(E.numel() * E.element_size())  # one read of the exponents
            return self._sweep(E, other, log_w, rows)

        device_assignment._run, device_local_search.best_swaps = run, best
        device_local_search.swap_round, device_local_search.permuted_into = round_, gather
        device_entropic._half_sweep = sweep
        return super().__enter__()

    def __exit__(self, *exc):
        device_assignment._run, device_local_search.best_swaps = self._run, self._best
        device_local_search.swap_round, device_local_search.permuted_into = self._round, self._gather
        device_entropic._half_sweep = self._sweep
        return super().__exit__(*exc)

    def launches(self) -> list[tuple]:
        """Per auction launch: (n, problems solved, their mean bids, the most bids of one)."""
        out = []
        for n, bids, active in self.auctions:
            k = int(active.sum())
            if k:
                b = bids[active.bool()].double()
                out.append((n, k, float(b.mean()), float(b.max())))
        return out

    def parts(self) -> dict:
        """Modelled H200 seconds by kind of work."""
        auction = sum(auction_seconds(n, k * mean, top) for n, k, mean, top in self.launches())
        return {"launches": self.launch_s + self.views * H200["view_s"],
                "matmuls": self.flops[torch.float32] / H200["tf32_flops"]
                + self.flops.get(torch.float64, 0) / H200["fp64_flops"],
                "auction": auction, "swap kernels": self.swap_bytes / H200["bandwidth"],
                "gather and Sinkhorn kernels": self.kernel_bytes / H200["bandwidth"],
                "spectra": self.eigh}

    def seconds(self) -> float:
        return sum(self.parts().values())

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())


def auction_seconds(n: int, total_bids: float, top: float) -> float:
    """One auction launch: its bids spread over the concurrent programs, or its longest problem."""
    programs = H200["sms"] * (2 if n > 1024 else 4)
    return max(total_bids / programs, top) * H200["bid_s"]


def extrapolate(rows: list[dict], n: int, pairs: int, batch: int, layers: int) -> dict:
    """Modelled seconds for ``pairs`` pairs of ``layers`` layers at ``n`` in device batches of
    ``batch`` (the spectra once per layer), from measured
    rows at two smaller sizes (each: n, pairs, its :meth:`Counters.parts` and
    :meth:`Counters.launches`): launches per batch held; matmuls per pair scaled as n³, the swap
    kernels as n²; each auction launch of a batch kept (the same sequence of linear steps), its
    problems scaled to the batch and its mean and largest bids per problem as powers of n
    fitted between the two rows."""
    lo, hi = sorted(rows, key=lambda r: r["n"])[-2:]
    batches = math.ceil(pairs / batch)
    scale = hi["n"], n / hi["n"]
    out = {"launches": hi["parts"]["launches"] * batches}
    for part, exp in (("matmuls", 3.0), ("swap kernels", 2.0), ("gather and Sinkhorn kernels", 2.0)):
        out[part] = hi["parts"][part] / hi["pairs"] * scale[1] ** exp * pairs
    out["spectra"] = layers * H200["eigh_2048_s"] * (n / 2048) ** 3
    fit = lambda a, b: math.log(b / a) / math.log(hi["n"] / lo["n"]) if a > 0 and b > 0 else 1.0  # noqa: E731
    bids_lo = sum(k * m for _, k, m, _ in lo["launches"]) / lo["pairs"]
    bids_hi = sum(k * m for _, k, m, _ in hi["launches"]) / hi["pairs"]
    e_mean = fit(bids_lo, bids_hi)
    e_top = fit(max(t for *_, t in lo["launches"]), max(t for *_, t in hi["launches"]))
    per_batch = sum(auction_seconds(n, k / hi["pairs"] * batch * m * scale[1] ** e_mean, t * scale[1] ** e_top)
                    for _, k, m, t in hi["launches"])
    full, rest = divmod(pairs, batch)
    out["auction"] = per_batch * full + (per_batch * rest / batch if rest else 0.0)
    out["bids exponent"], out["longest problem exponent"] = e_mean, e_top
    return out
