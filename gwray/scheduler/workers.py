"""GW worker actors (the driver loop that feeds them batches is :mod:`gwray.scheduler.pool`).

Each cost matrix is computed once, by the worker that first needs it (``GWWorker.cost``, an actor
task whose result lives in the Ray object store; it runs in its own concurrency group, so it never
waits behind that worker's queued solves while another worker needs it), and every later batch
gets the *reference*: a worker that already holds the matrix uses its own copy, another one pulls
it from the object store. The driver never touches the matrices. Batches go to the free worker
that already holds most of their matrices, and a batch is only handed out when every matrix it
needs is either ready or will be computed by the same worker, so two workers never wait on each
other's solves.

GPU workers (``batched=True``) get no cost references at all: each reads the (n, d) activations
of the layers it needs from the activation store (readable from every node) and builds their
costs on its own device, kept there in an LRU cache; only activations travel, never n² costs.

Fault tolerance is the driver's own bookkeeping: a batch whose worker dies (``RayActorError``) or
whose cost matrix is gone is put back in the queue, and a new actor takes the dead one's place
(Ray restarts none: ``max_restarts=0``); it gets work once it answers a ping.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import ray

from gwray.scheduler.batches import Batch
from gwray.scheduler.plan import LayerKey

if TYPE_CHECKING:
    from gwray.gw.warm import WarmState

# The starts batched_gw runs on the device (every named start; given plans are serial-only).
BATCHED_STARTS = ("identity", "mixed", "product", "entropic")

LOST = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
         ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)
"""System failures (a process or node gone), as opposed to errors raised by gwray code."""


class CostUnavailable(Exception):
    """A cost matrix a batch needs could not be fetched (its producer died); args: the keys."""


class GWWorker:
    """Body of the GW worker actor: computes cost matrices and solves batches of pairs.

    Parameters
    ----------
    store : object
        Has ``read_layer(checkpoint, layer) -> (n, d) array`` (an ActivationStore).
    metric, normalize : str
        ``costs`` config, passed to :func:`gwray.gw.costs.cost_matrix`.
    starts : list of str
        ``gw.starts`` (the solver skips ``"identity"`` for pairs whose samples are not aligned).
    max_iter : int
    tol : float
    aligned : iterable of (str, str)
        Checkpoint pairs whose rows are the same probe samples (every checkpoint with itself
        included); only those pairs use ``aligned=True``.
    batched : bool
        Solve equal-size batches with :func:`gwray.gw.batched.batched_gw` (the GPU path).
    cache_bytes : int, optional
        Cost matrices kept in this worker (least recently used dropped first). Default: 2 GiB,
        or an eighth of the device's memory for a batched worker on a CUDA device (each layer
        also keeps its bound data, as large again).
    keep_plans : bool
        Return each pair's solver state (record keys ``plan``, ``duals``, ``bound_duals``,
        ``start_ends``: :data:`gwray.scheduler.results.STATE_FIELDS`), for warm starts.
    warm_keep : float
        ``gw.warm_keep``: the pruning rule's threshold (:func:`gwray.gw.warm.warm_gw`).
    """

    def __init__(self, store, metric: str, normalize: str, starts: Sequence[str], max_iter: int,
                 tol: float, aligned: Iterable[tuple[str, str]], batched: bool = False,
                 cache_bytes: int | None = None, keep_plans: bool = False, warm_keep: float = 1.0):
        self.store, self.metric, self.normalize = store, metric, normalize
        self.starts, self.max_iter, self.tol = list(starts), max_iter, tol
        self.aligned = set(map(tuple, aligned))
        self.batched, self.cache_bytes, self.keep_plans = batched, cache_bytes, keep_plans
        self.warm_keep = warm_keep
        if cache_bytes is None:  # a batched worker's layers also keep their sorted rows there
            self.cache_bytes = _device_memory() // 8 if batched and _device().type == "cuda" else 2 << 30
        self._cache: OrderedDict[LayerKey, np.ndarray] = OrderedDict()
        self._summaries: dict = {}  # per-layer bound data (gwray.gw.bounds.layer_summary)
        self._device_data: dict = {}  # a batched worker's (gwray.gw.device_bounds.LayerData)
        self._lock = threading.Lock()  # ``cost`` runs in its own thread (concurrency group)

    def ping(self) -> int:
        """The worker's process id (also tells the driver the actor is alive)."""
        return os.getpid()

    def _keep(self, key: LayerKey, C: np.ndarray) -> None:
        with self._lock:
            self._cache[key] = C
            self._cache.move_to_end(key)
            while (len(self._cache) > 1
                   and sum(c.nbytes for c in self._cache.values()) > self.cache_bytes):
                key = self._cache.popitem(last=False)[0]
                self._summaries.pop(key, None)
                self._device_data.pop(key, None)

    def _summary(self, key: LayerKey, C: np.ndarray):
        """The layer's lower-bound data (sorted rows, spectrum): computed once per layer, not
        once per pair, and dropped with its cost matrix."""
        from gwray.gw.bounds import layer_summary

        with self._lock:
            S = self._summaries.get(key)
        if S is None:
            S = layer_summary(C)  # a device tensor too (copied to the host)
            with self._lock:
                if key in self._cache:
                    self._summaries[key] = S
        return S

    @ray.method(concurrency_group="costs")
    def cost(self, checkpoint: str, layer: str) -> np.ndarray:
        """Cost matrix of one layer, (n, n) float64, from the activation dataset (kept here too);
        CPU workers only (a batched worker builds its own, :meth:`_build_on_device`)."""
        from gwray.gw.costs import cost_matrix

        X = self.store.read_layer(checkpoint, layer)
        C = cost_matrix(X, metric=self.metric, normalize=self.normalize, name=f"{checkpoint}/{layer}")
        C = C.cpu().numpy() if hasattr(C, "cpu") else np.asarray(C)
        self._keep((checkpoint, layer), C)
        return C

    def _build_on_device(self, key: LayerKey):
        """Cost matrix of one layer as an (n, n) float64 tensor on this worker's device (CPU
        without CUDA), built there from the (n, d) activations read from the store."""
        import torch

        from gwray.gw.costs import cost_matrix

        X = torch.as_tensor(np.asarray(self.store.read_layer(*key))).to(_device())
        return cost_matrix(X, metric=self.metric, normalize=self.normalize, name=f"{key[0]}/{key[1]}")

    def _fetch(self, keys: Iterable[LayerKey],
               refs: Mapping[LayerKey, "ray.ObjectRef"]) -> dict[LayerKey, np.ndarray]:
        """The cost matrices of ``keys``, from this worker's cache or else the object store (a
        batched worker builds them on its device instead and never reads ``refs``)."""
        with self._lock:
            held = {k: self._cache[k] for k in keys if k in self._cache}
        missing = [k for k in keys if k not in held]
        if missing and self.batched:
            held |= {k: self._build_on_device(k) for k in missing}
        elif missing:
            try:
                # copies: ray.get's arrays are views of the object store, and a cached view would
                # pin the matrix there after the driver released it (a sweep's costs would pile up)
                held |= {k: np.array(C) for k, C in zip(missing, ray.get([refs[k] for k in missing]))}
            except LOST as exc:
                raise CostUnavailable(missing) from exc
        for k in missing:
            self._keep(k, held[k])
        with self._lock:
            for k in held:
                if k in self._cache:
                    self._cache.move_to_end(k)
        return held

    def solve(self, batch: Batch, refs: Mapping[LayerKey, "ray.ObjectRef"],
              warm: Mapping[tuple, tuple] | None = None) -> list[dict]:
        """Solve every pair of ``batch``; ``refs`` maps each needed (checkpoint, layer) to its cost ref.

        ``warm`` maps a pair key to ``(source key, transposed, WarmState or None)``: the source
        pair's solver state (None when the source is solved earlier in this batch) warm-starts the
        pair (:func:`gwray.gw.warm.warm_gw`: its plan, its duals, and only the configured starts
        the pruning rule keeps).

        Returns
        -------
        list of dict
            Full pair records (DESIGN.md: names, gw, lower_bound, init — "warm" when the warm
            plan won —, iterations, marginal_error, seconds, n, solver), in batch order, plus
            the state fields (with ``keep_plans``), ``warm`` (a warm plan was offered) and
            ``starts_pruned`` (configured starts skipped).
        """
        costs = self._fetch(batch.cost_keys, refs)
        results = {}
        if self.batched and batch.n[0] == batch.n[1]:
            results = self._solve_batched(batch, costs)
        elif self.batched:  # unequal sizes: the serial solver, on host copies of the device costs
            costs = {k: C.cpu().numpy() for k, C in costs.items()}
        from gwray.gw.warm import WarmState, warm_gw

        records, solved, warm = [], {}, warm or {}
        for t in batch.tasks:
            r, state, pruned = results.get(t.key), None, 0
            prior = None if r is not None else self._warm_state(warm.get(t.key), solved)
            if r is None:
                (ka, kb), al = t.cost_keys, (t.checkpoint_a, t.checkpoint_b) in self.aligned
                r, state, pruned = warm_gw(
                    costs[ka], costs[kb], prior, aligned=al, starts=self.starts,
                    keep=self.warm_keep, max_iter=self.max_iter, tol=self.tol, keep_coupling=False,
                    layer_data=(self._summary(ka, costs[ka]), self._summary(kb, costs[kb])))
                if r.init == "given":
                    r.init = "warm"
            elif r.permutation is not None:  # the device path: its plan, no duals
                state = WarmState(r.permutation, value=r.value)
            solved[t.key] = state
            rec = {"n": batch.n[0], **r.record(), "warm": prior is not None, "starts_pruned": pruned}
            if self.keep_plans and state is not None:
                rec |= {"plan": state.plan, "duals": state.duals, "bound_duals": state.bound_duals,
                        "start_ends": state.start_ends}
            records.append({"checkpoint_a": t.checkpoint_a, "layer_a": t.layer_a,
                            "checkpoint_b": t.checkpoint_b, "layer_b": t.layer_b, **rec})
        return records

    @staticmethod
    def _warm_state(entry, solved: Mapping) -> WarmState | None:
        """The solver state of a warm entry (of the source solved in this batch if need be;
        transposed when the source's plan runs layer_b -> layer_a), or None."""
        if entry is None:
            return None
        source, transposed, state = entry
        if state is None:
            state = solved.get(source)
        return state.transposed() if state is not None and transposed else state

    def _layer_data(self, key: LayerKey, C):
        """A batched worker's bound data of one layer (its sorted rows and spectrum, on its
        device), computed once per layer and dropped with its cost matrix."""
        from gwray.gw.device_bounds import LayerData

        with self._lock:
            D = self._device_data.get(key)
        if D is None:
            D = LayerData(C[None])
            with self._lock:
                if key in self._cache:
                    self._device_data[key] = D
        return D

    def _solve_batched(self, batch: Batch, costs: Mapping[LayerKey, np.ndarray]) -> dict:
        """The batch's pairs on the device engine (:func:`gwray.gw.batched.batched_gw`): the
        layers they need stacked once on the device (each pair two indices into the stack), with
        the layers' cached bound data; aligned and unaligned pairs in separate calls. The engine
        sizes its device batches itself."""
        import torch

        from gwray.gw.batched import batched_gw
        from gwray.gw.device_bounds import LayerData

        keys = sorted(batch.cost_keys)
        at = {k: i for i, k in enumerate(keys)}
        stack = torch.stack([costs[k] for k in keys]).to(_device())
        data = LayerData.cat([self._layer_data(k, costs[k]) for k in keys])
        starts = [s for s in self.starts if s in BATCHED_STARTS or s.startswith("random:")] or ["product"]
        out = {}
        for al in (True, False):
            tasks = [t for t in batch.tasks if ((t.checkpoint_a, t.checkpoint_b) in self.aligned) == al]
            if tasks:
                pairs = np.array([(at[t.cost_keys[0]], at[t.cost_keys[1]]) for t in tasks])
                rs = batched_gw(stack, stack, pairs=pairs, aligned=al, starts=starts,
                                max_iter=self.max_iter, tol=self.tol, keep_coupling=False,
                                layer_data=(data, data))
                out |= {t.key: r for t, r in zip(tasks, rs)}
        return out


def _device():
    """The device a batched worker builds its costs and solves on: CUDA when torch sees one."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_memory() -> int:
    """Total memory of the CUDA device, in bytes."""
    import torch

    return torch.cuda.get_device_properties(_device()).total_memory
