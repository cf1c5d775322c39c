"""A model split over Ray actors, each holding a contiguous range of blocks (DESIGN.md, "Sharded models").

Shard ``k`` builds the base model on the meta device, materialises only its own blocks (plus the
embeddings in shard 0 and the final norm in the last shard) and reads only their tensors, by name,
from the safetensors files listed in ``model.safetensors.index.json``: files holding none of its
tensors are never opened. Micro-batches flow shard 0 → 1 → … through Ray object refs, several in
flight, so shard ``k`` works on micro-batch ``j`` while shard ``k + 1`` works on ``j - 1``. Every
shard pools the hidden states of its own layers and writes them with the writer it was given.

The checkpoint directory must be readable from every node that hosts a shard (shared filesystem).
Ray must already be initialised; this module never calls ``ray.init``.
"""
from __future__ import annotations

import math
import resource
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gwray.errors import GwrayComputeError, GwrayInputError
from gwray.models import families
from gwray.models.shard_plan import block_weights, plan_blocks
from gwray.models.weights import check_weights


class ShardFailure(RuntimeError):
    """A shard failed mid-run (an error inside it); the message names the shard and its blocks.
    A shard that *died* raises :class:`~gwray.errors.GwrayComputeError` instead (exit 2)."""


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ShardActor:
    """One shard: a contiguous range of blocks of one model. Run as a Ray actor.

    An actor is cheap to start and can :meth:`load` several models in turn (tests reuse actors).

    Parameters
    ----------
    index : int
        Position of the shard in the pipeline.
    """

    def __init__(self, index: int):
        self.index, self.base = index, None

    def load(self, model_dir: str, start: int, stop: int, dtype: str = "float32", device: str = "cpu") -> dict:
        """Materialise blocks ``[start, stop)`` (+ embeddings / final norm) from the safetensors files.

        Returns
        -------
        dict
            ``index``, ``blocks`` (start, stop), ``params`` (base-model parameter names held),
            ``files`` (safetensors files opened), ``bytes`` (held), ``seconds``, ``peak_rss``.
        """
        self.start, self.stop = start, stop
        return self._named(self._load, model_dir, dtype, device)

    def _load(self, model_dir: str, dtype: str, device: str) -> dict:
        import transformers

        t0, start, stop, self.base = time.perf_counter(), self.start, self.stop, None
        base, family = families.build_empty(transformers.AutoConfig.from_pretrained(model_dir))
        self.family, self.device = family, torch.device(device)
        self.n_blocks = family.n_blocks(base)
        modules = family.modules_for(self.n_blocks, start, stop)
        report = families.load_modules(base, family, model_dir, modules, getattr(torch, dtype), self.device)
        self.base = base
        return {"index": self.index, "blocks": (start, stop), **report, "seconds": time.perf_counter() - t0,
                "peak_rss": _peak_rss()}

    def held_parameters(self) -> list[str]:
        """Names of the base-model parameters that are materialised (not on the meta device)."""
        return sorted(n for n, p in self.base.named_parameters() if p.device.type != "meta")

    def set_output(self, pooler, writer, layer_names: list[str]) -> None:
        """Where layers go: ``layer_names[k]`` names hidden state ``k`` (0 = embeddings)."""
        self.pooler, self.writer, self.layer_names = pooler, writer, list(layer_names)

    def _emit(self, k: int, hidden: torch.Tensor, mask: torch.Tensor, sample_ids: np.ndarray) -> None:
        rows, row_ids = self.pooler(hidden, mask, sample_ids, layer=self.layer_names[k])
        self.writer.write(self.layer_names[k], np.asarray(row_ids), rows.cpu())

    def step(self, batch: dict) -> dict:
        """Run one micro-batch through this shard's blocks, pooling and writing its layers.

        Parameters
        ----------
        batch : dict
            ``sample_ids`` (b,) int64, ``attention_mask`` (b, t), and ``input_ids`` (b, t) for
            shard 0 or ``hidden`` (b, t, d) for the others.

        Returns
        -------
        dict
            The same keys with ``hidden`` replaced by this shard's output, or ``{"rows": b}`` from
            the last shard.
        """
        return self._named(self._step, batch)

    def _named(self, fn, *args):
        """Run ``fn`` so that any error it raises names this shard (one line)."""
        try:
            return fn(*args)
        except GwrayInputError as exc:
            raise GwrayInputError(f"shard {self.index}: {exc}") from None
        except Exception as exc:
            raise ShardFailure(f"shard {self.index} (blocks {self.start}-{self.stop - 1}) failed: "
                               f"{type(exc).__name__}: {exc}") from None

    def _step(self, batch: dict) -> dict:
        # A writable copy: arrays from the object store are read-only views.
        fam, base, sids = self.family, self.base, np.array(batch["sample_ids"], dtype=np.int64)
        mask = batch["attention_mask"].to(self.device)
        with torch.no_grad():
            if self.start == 0:
                hidden = fam.embed(base, batch["input_ids"].to(self.device), mask)
                self._emit(0, hidden, mask, sids)
            else:
                hidden = batch["hidden"].to(self.device)
            ctx = fam.context(base, hidden, mask)
            for i in range(self.start, self.stop):
                hidden = fam.run_block(base, i, hidden, ctx)
                self._emit(i + 1, fam.finish(base, hidden) if i == self.n_blocks - 1 else hidden, mask, sids)
        if self.stop == self.n_blocks:
            return {"rows": len(sids)}
        return {"hidden": hidden.cpu(), "attention_mask": batch["attention_mask"], "sample_ids": sids}

    def memory(self) -> dict:
        """``peak_rss`` and current ``rss`` (Linux /proc; 0 elsewhere) of this process, in bytes."""
        status = Path("/proc/self/status")
        lines = status.read_text().splitlines() if status.is_file() else []
        rss = next((int(ln.split()[1]) * 1024 for ln in lines if ln.startswith("VmRSS:")), 0)
        return {"peak_rss": _peak_rss(), "rss": rss}


@dataclass
class ShardPool:
    """Shard actors placed by one placement group. ``close()`` kills them and frees the group."""

    actors: list
    group: object
    names: list[str] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)

    def close(self) -> None:
        """Kill the actors and wait until they are gone (so none writes after), then free the group."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if self.group is None:
            return
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        for actor in self.actors:
            try:
                ray.get(actor.memory.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
        remove_placement_group(self.group)
        self.group = None


def start_shards(shards: int, gpus_per_shard: float = 0, cpus: float | None = None, timeout: float = 120) -> ShardPool:
    """Place ``shards`` actors with a placement group (one bundle each, packed where possible).

    A bundle asks for ``gpus_per_shard`` GPUs (CPU only when 0) and ``cpus`` CPUs: by default one,
    or an equal share of the CPUs available now when fewer are free than shards (shards on a small
    machine share cores).
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if cpus is None:
        cpus = max(0.01, min(1.0, math.floor(100 * ray.available_resources().get("CPU", 0) / shards) / 100))
    bundle = {"CPU": cpus, **({"GPU": gpus_per_shard} if gpus_per_shard else {})}
    group = placement_group([dict(bundle) for _ in range(shards)], strategy="PACK")
    try:
        ray.get(group.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise GwrayInputError(f"resources.gpus_per_shard: the cluster cannot place {shards} shards of "
                              f"{bundle} within {timeout:.0f} s") from None
    remote = ray.remote(ShardActor)
    tag = uuid.uuid4().hex[:8]
    names = [f"gwray-shard-{k}-{tag}" for k in range(shards)]
    actors = [remote.options(name=names[k], num_cpus=cpus, num_gpus=gpus_per_shard, max_restarts=0,
                             scheduling_strategy=PlacementGroupSchedulingStrategy(group, k)).remote(k)
              for k in range(shards)]
    return ShardPool(actors, group, names)


def load_shards(pool: ShardPool, model_dir: "str | Path", dtype: str = "float32", device: str = "cpu",
                shards: int | None = None) -> list[dict]:
    """Plan the block ranges of the model in ``model_dir`` and load them into the first ``shards`` actors.

    Returns
    -------
    list of dict
        Each actor's :meth:`ShardActor.load` report, in shard order (also kept in ``pool.infos``).
    """
    import transformers

    shards = shards or len(pool.actors)
    model_dir = str(model_dir)
    base, family = families.build_empty(transformers.AutoConfig.from_pretrained(model_dir))
    check_weights(model_dir, base)  # damaged or missing files fail here, before any actor loads
    ranges = plan_blocks(block_weights(base, family), shards)
    pool.infos = []
    refs = [a.load.remote(model_dir, s, e, dtype, device) for a, (s, e) in zip(pool.actors, ranges)]
    pool.infos = _gather(pool, refs)
    return pool.infos


def _gather(pool: ShardPool, refs: list) -> list:
    """``ray.get`` that turns a dead actor or a failed shard into one error naming the shard."""
    import ray

    try:
        return ray.get(refs)
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
        # A step downstream of a dead shard fails with a task error whose cause is that actor's death.
        cause = (exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else None) or exc
        if isinstance(cause, (GwrayInputError, ShardFailure)):
            raise cause from None
        if not isinstance(cause, ray.exceptions.RayActorError):
            raise ShardFailure(f"a shard failed: {str(cause).strip().splitlines()[-1]}") from None
        ids = [a._actor_id.hex() for a in pool.actors]
        k = ids.index(cause.actor_id) if cause.actor_id in ids else None
        where = f"shard {k} ({pool.names[k]})" if k is not None else "a shard actor"
        if k is not None and pool.infos:
            where += ", blocks {}-{}".format(pool.infos[k]["blocks"][0], pool.infos[k]["blocks"][1] - 1)
        raise GwrayComputeError(f"{where} died mid-run (out of memory or killed?); give shards more memory "
                                "or use more of them, then rerun: finished checkpoints are kept") from None


def run_pipeline(pool: ShardPool, batches, pooler, writer, layer_names: list[str], in_flight: int | None = None,
                 on_rows=None) -> int:
    """Stream micro-batches through the loaded shards; every shard writes its own layers.

    Parameters
    ----------
    batches : iterable of dict
        ``sample_ids`` (b,) int64, ``input_ids`` (b, t), ``attention_mask`` (b, t).
    pooler, writer
        :class:`gwray.activations.capture.Pooler` and :class:`gwray.activations.store.ActivationWriter`.
    layer_names : list of str
        Names of the ``n_blocks + 1`` hidden states (embeddings first).
    in_flight : int, optional
        Micro-batches in the pipeline at once (default ``2 * shards``).
    on_rows : callable, optional
        Called with the number of samples of each micro-batch the last shard finished (progress).

    Returns
    -------
    int
        Number of samples processed. On any failure the writer is aborted (no partial layer is
        left) and :class:`ShardFailure`, :class:`~gwray.errors.GwrayComputeError` (a shard died)
        or :class:`~gwray.errors.GwrayInputError` names the shard.
    """
    import ray

    actors = pool.actors[: len(pool.infos)]
    n_blocks = pool.infos[-1]["blocks"][1]
    if len(layer_names) != n_blocks + 1:
        raise GwrayInputError(f"layers.select: the sharded path writes embeddings + {n_blocks} blocks "
                              f"({n_blocks + 1} layers), got {len(layer_names)} layer names")
    in_flight = in_flight or 2 * len(actors)
    try:
        ray.get([a.set_output.remote(pooler, writer, layer_names) for a in actors])
        pending, rows, on_rows = [], 0, on_rows or (lambda n: None)
        for batch in batches:
            ref = ray.put(batch)
            for actor in actors:
                ref = actor.step.remote(ref)
            pending.append(ref)
            if len(pending) >= in_flight:
                rows += (done := _gather(pool, [pending.pop(0)])[0]["rows"])
                on_rows(done)
        while pending:
            rows += (done := _gather(pool, [pending.pop(0)])[0]["rows"])
            on_rows(done)
        return rows
    except BaseException:
        pool.close()  # stop every shard before deleting: a live one could still write a part
        writer.abort()
        raise


def extract_sharded(cfg, out, checkpoint: str, checkpoint_path: str | None, pooler, writer, probe,
                    tokenize, on_rows=None) -> int:
    """Write one checkpoint's activations with the model split over ``cfg.model.shards`` Ray actors.

    Called by :func:`gwray.activations.extract.extract` (which builds ``pooler`` and ``writer``,
    then commits the manifest or aborts). Ray must be initialised.

    Parameters
    ----------
    cfg : gwray.config.RunConfig
    out : Location or str
        The run directory (``writer`` already points into it).
    checkpoint : str
        Checkpoint id (for messages).
    checkpoint_path : str or None
        The checkpoint's HF directory (default ``cfg.model.path``).
    pooler : gwray.activations.capture.Pooler
    writer : gwray.activations.store.ActivationWriter
        Its ``layer_names`` are the ``blocks`` selection: embeddings, then every block.
    probe : gwray.activations.probes.ProbeSet
        Text probe; micro-batches are :meth:`ProbeSet.batches` of ``cfg.probe.batch_size``.
    tokenize : callable
        ``tokenize(tokenizer, texts, max_tokens) -> {"input_ids", "attention_mask"}`` (from activations/).
    on_rows : callable, optional
        Progress: called with the samples of each finished micro-batch.

    Returns
    -------
    int
        Samples written (``len(probe)``).

    Raises
    ------
    GwrayInputError
        Not an HF text model, a selection other than ``blocks``, an unsupported architecture,
        more shards than blocks, a missing safetensors file, unplaceable shards.
    GwrayComputeError, ShardFailure
        A shard died / failed mid-run (named); no part of this checkpoint is left on disk.
    """
    from gwray.models.loaders import load_model

    if cfg.model.source != "hf":
        raise GwrayInputError(f"config key model.shards: sharding needs model.source hf, got {cfg.model.source!r}")
    if cfg.layers.select != "blocks":
        raise GwrayInputError(f"config key layers.select: with model.shards > 1 only 'blocks' is supported, "
                              f"got {cfg.layers.select!r}")
    if probe.texts is None:
        raise GwrayInputError(f"probe {probe.source}: sharded models take text, the probe holds arrays")
    skeleton = load_model(cfg.model, checkpoint_path, device="cpu", meta=True)  # tokenizer + resolved path
    families.get_family(skeleton.family)
    device = "cuda" if cfg.resources.gpus_per_shard > 0 else "cpu"
    size = cfg.probe.batch_size

    def batches():
        for part in probe.batches(size):
            enc = tokenize(skeleton.tokenizer, part["text"], cfg.probe.max_tokens, part["sample_id"])
            yield {"sample_ids": np.asarray(part["sample_id"], dtype=np.int64), "input_ids": enc["input_ids"],
                   "attention_mask": enc["attention_mask"]}

    pool = start_shards(cfg.model.shards, cfg.resources.gpus_per_shard)
    try:
        load_shards(pool, skeleton.path, cfg.model.dtype, device)
        done = run_pipeline(pool, batches(), pooler, writer, writer.layer_names, on_rows=on_rows)
    finally:
        pool.close()
    if done != len(probe):
        raise ShardFailure(f"checkpoint {checkpoint}: the shards returned {done} of {len(probe)} samples")
    return done
