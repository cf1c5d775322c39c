"""The driver loop that feeds GW worker actors batches: placement, cost references, retries.

How costs travel and how failures are handled is described in :mod:`gwray.scheduler.workers`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import ray

from gwray.scheduler.plan import Batch, LayerKey
from gwray.scheduler.workers import LOST, CostUnavailable, GWWorker

MAX_ATTEMPTS = 4
"""A batch that fails this many times (its worker died each time) stops the run."""


@dataclass
class _Slot:
    """Driver-side view of one actor: what it holds, what runs on it, whether it is trusted."""

    actor: object
    held: set = field(default_factory=set)
    running: int = 0
    ping: object = None  # a pending ping after a failure: no new work until it answers


class WorkerPool:
    """``workers`` GW actors plus the bookkeeping that feeds them.

    Parameters
    ----------
    workers : int
    num_cpus, num_gpus : float
        Resources of each actor (``resources.cpus_per_worker`` / ``gpus_per_worker``).
    depth : int
        Batches queued per actor, so a worker starts its next batch while the driver is still
        writing the previous one (1 once fewer batches than workers are left).
    window : int
        How many queued batches the affinity search looks at.
    **worker_kwargs
        Passed to :class:`GWWorker`.
    """

    def __init__(self, workers: int, num_cpus: float, num_gpus: float, depth: int = 2,
                 window: int = 64, **worker_kwargs):
        actor = ray.remote(concurrency_groups={"costs": 1})(GWWorker)
        self._cls = actor.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1,
                                  max_task_retries=0)
        self.slots = [_Slot(self._cls.remote(**worker_kwargs)) for _ in range(workers)]
        self.depth, self.window = depth, window
        self.batched = worker_kwargs.get("batched", False)
        self.costs: dict[LayerKey, tuple[object, int]] = {}  # key → (ref, slot index)
        self.ready: set[LayerKey] = set()
        self.cost_tasks = 0  # cost matrices computed (by GPU workers: built where not held)

    def _usable(self, batch: Batch, idx: int) -> bool:
        return all(k in self.ready or k not in self.costs or self.costs[k][1] == idx
                   for k in batch.cost_keys)

    def _pick(self, pending: list[Batch], idx: int, ready) -> int | None:
        held, best, best_score = self.slots[idx].held, None, -1
        for pos, batch in enumerate(pending[:self.window]):
            if self._usable(batch, idx) and ready(batch):
                score = len(batch.cost_keys & held)
                if score > best_score:
                    best, best_score = pos, score
        return best

    def _submit(self, batch: Batch, idx: int, extra: dict):
        slot = self.slots[idx]
        refs = {}
        if self.batched:  # a GPU worker builds the costs it does not hold from the activations
            self.cost_tasks += len(batch.cost_keys - slot.held)
        else:
            for key in sorted(batch.cost_keys - set(self.costs)):
                self.costs[key] = (slot.actor.cost.remote(*key), idx)
                self.cost_tasks += 1
            refs = {k: self.costs[k][0] for k in batch.cost_keys}
        slot.held |= batch.cost_keys
        slot.running += 1
        return slot.actor.solve.remote(batch, refs, extra)

    def _forget(self, keys: Iterable[LayerKey]) -> None:
        for k in keys:
            self.costs.pop(k, None)
            self.ready.discard(k)
            for s in self.slots:
                s.held.discard(k)

    def _failed(self, idx: int) -> None:
        slot = self.slots[idx]
        self._forget([k for k, (_, owner) in self.costs.items()
                      if owner == idx and k not in self.ready])
        slot.held = set()
        if slot.ping is None:
            slot.ping = slot.actor.ping.remote()

    def run(self, batches: Sequence[Batch], on_result: Callable[[Batch, list[dict]], None],
            ready: Callable[[Batch], bool] | None = None,
            payload: Callable[[Batch], dict] | None = None) -> None:
        """Solve every batch; call ``on_result(batch, records)`` in the driver as each finishes.

        ``ready(batch)`` holds a batch back while False (e.g. until the plans it starts from are
        solved; when no batch is ready and none runs, the first pending one goes anyway), and
        ``payload(batch)``, called as it is handed out, is passed to ``GWWorker.solve`` as ``warm``.

        Raises
        ------
        RuntimeError
            A batch failed :data:`MAX_ATTEMPTS` times.
        Exception
            A solver error inside a worker (bad input is not retried).
        """
        pending, attempts = list(batches), {b.index: 0 for b in batches}
        inflight: dict = {}  # solve ref → (batch, slot index)
        ready = ready or (lambda batch: True)
        while pending or inflight:
            for idx, slot in enumerate(self.slots):
                # queue ahead only while there is work for everyone: near the end a second queued
                # batch would leave another worker idle
                depth = self.depth if len(pending) >= len(self.slots) else 1
                while pending and slot.ping is None and slot.running < depth:
                    stuck = not inflight  # nothing runs that could make a batch ready
                    pos = self._pick(pending, idx, (lambda b: True) if stuck else ready)
                    if pos is None:
                        break
                    batch = pending.pop(pos)
                    extra = payload(batch) if payload else None
                    inflight[self._submit(batch, idx, extra)] = (batch, idx)
            waiting = {self.costs[k][0]: k for k in self.costs if k not in self.ready}
            pings = {s.ping: i for i, s in enumerate(self.slots) if s.ping is not None}
            done, _ = ray.wait(list(inflight) + list(waiting) + list(pings), num_returns=1,
                               fetch_local=False)
            ref = done[0]
            if ref in waiting:
                self.ready.add(waiting[ref])
            elif ref in pings:
                self._pinged(pings[ref], ref)
            else:
                batch, idx = inflight.pop(ref)
                self.slots[idx].running -= 1
                records = self._collect(ref, batch, idx, attempts)
                if records is None:
                    pending.insert(0, batch)
                else:
                    on_result(batch, records)

    def _pinged(self, idx: int, ref) -> None:
        slot = self.slots[idx]
        try:
            ray.get(ref)
            slot.ping = None
        except ray.exceptions.RayActorError:
            slot.ping = slot.actor.ping.remote()

    def _collect(self, ref, batch: Batch, idx: int, attempts: dict) -> list[dict] | None:
        """The batch's records, or None when it must be resubmitted."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc
            while isinstance(cause, ray.exceptions.RayTaskError) and cause.cause is not None:
                cause = cause.cause  # a cost task's error travels through the solve task
            if not isinstance(cause, CostUnavailable):
                raise cause from exc
            self._forget(cause.args[0])
        except LOST:
            self._failed(idx)
        attempts[batch.index] += 1
        if attempts[batch.index] >= MAX_ATTEMPTS:
            raise RuntimeError(f"batch {batch.index} failed {MAX_ATTEMPTS} times; giving up")
        return None

    def shutdown(self) -> None:
        """Kill the actors (their cost matrices stay in the object store while referenced)."""
        for s in self.slots:
            ray.kill(s.actor, no_restart=True)
