"""The driver loop that feeds GW worker actors batches: placement, cost references, retries.

How costs travel and how failures are handled is described in :mod:`gwray.scheduler.workers`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ray

from gwray.errors import GwrayComputeError
from gwray.scheduler.batches import Batch
from gwray.scheduler.plan import LayerKey
from gwray.scheduler.workers import LOST, CostUnavailable, GWWorker

MAX_ATTEMPTS = 4
"""A batch that fails this many times (its worker died each time) stops the run; so does a worker
slot whose new actors die this many times in a row as they start, before answering a ping."""


@dataclass
class _Slot:
    """Driver-side view of one actor: what it holds, what runs on it, whether it is trusted."""

    actor: object
    held: set = field(default_factory=set)
    running: int = 0
    ping: object = None  # a pending ping after a failure: no new work until it answers
    start_deaths: int = 0  # new actors in a row that died before answering their ping


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
        How many batches the pool takes ahead from its source; the affinity search looks at
        them all.
    **worker_kwargs
        Passed to :class:`GWWorker`.
    """

    def __init__(self, workers: int, num_cpus: float, num_gpus: float, depth: int = 2,
                 window: int = 64, **worker_kwargs):
        actor = ray.remote(concurrency_groups={"costs": 1})(GWWorker)
        # Ray never restarts a worker: the pool starts a new actor in a dead one's place, so that
        # it sees each death, also one as the actor starts (Ray holds the calls queued for an actor
        # it restarts without failing them, and a worker that dies as it starts would be waited
        # for without end).
        self._cls = actor.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0,
                                  max_task_retries=0)
        self._kwargs = worker_kwargs
        self.slots = [_Slot(self._cls.remote(**worker_kwargs)) for _ in range(workers)]
        self.depth, self.window = depth, window
        self.batched = worker_kwargs.get("batched", False)
        self.costs: dict[LayerKey, tuple[object, int]] = {}  # key → (ref, slot index)
        self.ready: set[LayerKey] = set()
        self.waiting: dict = {}  # ref → key of the cost tasks not finished yet
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
            for key in sorted(k for k in batch.cost_keys if k not in self.costs):
                ref = slot.actor.cost.remote(*key)
                self.costs[key], self.waiting[ref] = (ref, idx), key
                self.cost_tasks += 1
            refs = {k: self.costs[k][0] for k in batch.cost_keys}
        slot.held |= batch.cost_keys
        slot.running += 1
        return slot.actor.solve.remote(batch, refs, extra)

    def _finished(self, batch: Batch, needs: dict[str, int] | None) -> None:
        """Count the batch's pairs off ``needs``; release the cost matrices no pair needs now."""
        if needs is None:
            return
        for t in batch.tasks:
            for c in {t.checkpoint_a, t.checkpoint_b}:
                needs[c] -= 1
                if not needs[c]:
                    self._forget([k for k in self.costs if k[0] == c])

    def _forget(self, keys: Iterable[LayerKey]) -> None:
        for k in keys:
            ref, _ = self.costs.pop(k, (None, None))
            self.waiting.pop(ref, None)
            self.ready.discard(k)
            for s in self.slots:
                s.held.discard(k)

    def _failed(self, idx: int, actor) -> None:
        """``actor``, slot ``idx``'s worker when a task of it was lost, died: a new actor takes
        its place (once per death: its other lost tasks find it replaced)."""
        slot = self.slots[idx]
        if slot.actor is not actor:
            return
        self._forget([k for k, (_, owner) in self.costs.items()
                      if owner == idx and k not in self.ready])
        slot.held = set()
        self._replace(slot)

    def _replace(self, slot: _Slot) -> None:
        """A new actor for ``slot``; it gets work once it answers a ping."""
        ray.kill(slot.actor, no_restart=True)  # dead already, or cut off with its node: never two
        slot.actor = self._cls.remote(**self._kwargs)
        slot.ping = slot.actor.ping.remote()

    def run(self, batches: Iterable[Batch], on_result: Callable[[Batch, list[dict]], None],
            ready: Callable[[Batch], bool] | None = None,
            payload: Callable[[Batch], dict] | None = None,
            on_idle: Callable[[], None] | None = None, idle_seconds: float = 1.0,
            needs: dict[str, int] | None = None) -> None:
        """Solve every batch; call ``on_result(batch, records)`` in the driver as each finishes.

        ``batches`` is consumed as work is handed out (a generator never has to exist as a list):
        the pool holds :attr:`window` batches ahead. ``ready(batch)`` holds a batch back while
        False (e.g. until the plans it starts from are solved; when no batch is ready and none
        runs, the first pending one goes anyway), and ``payload(batch)``, called as it is handed
        out, is passed to ``GWWorker.solve`` as ``warm``. ``on_idle()`` is called whenever
        ``idle_seconds`` pass without any batch finishing. ``needs`` counts the pairs of
        ``batches`` that involve each checkpoint (updated here as batches finish): at 0 the
        driver drops its references to that checkpoint's cost matrices and the object store
        frees them, so a sweep holds the costs of the few checkpoints in progress, not all.

        Raises
        ------
        GwrayComputeError
            A batch's worker died :data:`MAX_ATTEMPTS` times.
        Exception
            A solver error inside a worker (bad input is not retried).
        """
        source, pending, attempts = iter(batches), [], {}
        inflight: dict = {}  # solve ref → (batch, slot index, the actor it runs on)
        ready = ready or (lambda batch: True)
        more = True  # the source may hold more batches
        while True:
            while more and len(pending) < self.window:
                batch = next(source, None)
                if batch is None:
                    more = False
                else:
                    pending.append(batch)
                    attempts[batch.index] = 0
            if not (pending or inflight):
                return
            for idx, slot in enumerate(self.slots):
                # queue ahead only while there is work for everyone: near the end a second queued
                # batch would leave another worker idle
                depth = self.depth if more or len(pending) >= len(self.slots) else 1
                while pending and slot.ping is None and slot.running < depth:
                    stuck = not inflight  # nothing runs that could make a batch ready
                    pos = self._pick(pending, idx, (lambda b: True) if stuck else ready)
                    if pos is None:
                        break
                    batch = pending.pop(pos)
                    extra = payload(batch) if payload else None
                    inflight[self._submit(batch, idx, extra)] = (batch, idx, slot.actor)
            pings = {s.ping: i for i, s in enumerate(self.slots) if s.ping is not None}
            done, _ = ray.wait(list(inflight) + list(self.waiting) + list(pings), num_returns=1,
                               fetch_local=False, timeout=idle_seconds if on_idle else None)
            if not done:
                on_idle()
                continue
            ref = done[0]
            if ref in self.waiting:
                self.ready.add(self.waiting.pop(ref))
            elif ref in pings:
                self._pinged(pings[ref], ref)
            else:
                batch, idx, actor = inflight.pop(ref)
                self.slots[idx].running -= 1
                records = self._collect(ref, batch, idx, actor, attempts)
                if records is None:
                    pending.insert(0, batch)
                else:
                    del attempts[batch.index]
                    self._finished(batch, needs)
                    on_result(batch, records)

    def _pinged(self, idx: int, ref) -> None:
        slot = self.slots[idx]
        try:
            ray.get(ref)
            slot.ping, slot.start_deaths = None, 0
        except LOST:
            slot.start_deaths += 1
            if slot.start_deaths >= MAX_ATTEMPTS:
                raise GwrayComputeError(
                    f"GW worker {idx}: a new worker died {MAX_ATTEMPTS} times in a row as it started, "
                    "before taking any work (its node out of memory, or a broken environment there? the "
                    "Ray worker logs say), then rerun: the solved pairs are kept") from None
            self._replace(slot)

    def _collect(self, ref, batch: Batch, idx: int, actor, attempts: dict) -> list[dict] | None:
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
            self._failed(idx, actor)
        attempts[batch.index] += 1
        if attempts[batch.index] >= MAX_ATTEMPTS:
            first = "/".join(batch.tasks[0].key)
            raise GwrayComputeError(
                f"GW batch {batch.index} ({len(batch.tasks)} pairs from {first}, n = {batch.n[0]}): its "
                f"worker died {MAX_ATTEMPTS} times (out of memory? lower resources.batch_pairs or give "
                "workers more memory), then rerun: the solved pairs are kept")
        return None

    def shutdown(self) -> None:
        """Kill the actors (their cost matrices stay in the object store while referenced)."""
        for s in self.slots:
            ray.kill(s.actor, no_restart=True)
