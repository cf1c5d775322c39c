"""Extraction: probe → model → pooled vectors → activation dataset.

Two paths with identical output: a Ray Data pipeline (the probe as a dataset of batch-sized blocks
→ ``map_batches`` with a model actor class → parts written by the actors → manifest written by the
driver) and a plain in-process loop (tests, notebooks). Both cut the probe into the same batches
of ``probe.batch_size`` samples (:meth:`ProbeSet.batches`), so they run the same forward passes.
Models with ``model.shards > 1`` go to :func:`gwray.models.sharded.extract_sharded`.

Any failure removes the partial checkpoint: a dataset is complete (manifest present) or absent.
"""
from __future__ import annotations

import inspect
import re
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from gwray import __version__
from gwray.activations.capture import LayerCapture, Pooler, select_layers
from gwray.activations.probes import ProbeSet, load_probe, tokenize
from gwray.activations.store import ActivationWriter
from gwray.errors import GwrayInputError
from gwray.models.loaders import LoadedModel, load_model
from gwray.storage import Location

_INPUT_ERROR_RE = re.compile(r"Gwray(?:Input|Storage)Error: ([^\n]+)")


def _runner(loaded: LoadedModel, specs) -> torch.nn.Module:
    """The HF base model when every layer lives in it (no LM-head logits), else the whole module."""
    prefix = loaded.base_prefix
    if loaded.kind == "hf" and prefix and all(s.module == prefix or s.module.startswith(prefix + ".") for s in specs):
        return loaded.runner
    return loaded.module


class BatchExtractor:
    """Load a model once, then pool and write the selected layers of one probe batch per call.

    The same class is the in-process worker and the Ray Data actor (``map_batches``).

    Parameters
    ----------
    cfg : gwray.config.RunConfig
    checkpoint_path : str or None
    writer : ActivationWriter, optional
        Where :meth:`__call__` writes; may be set later (its layer names must be ours).
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    """

    def __init__(self, cfg, checkpoint_path, writer: ActivationWriter | None = None, device=None):
        self.loaded = load_model(cfg.model, checkpoint_path, device)
        self.specs = select_layers(self.loaded, cfg.layers.select)
        if writer is not None:  # the writer's layers (for "all": those the forward pass really calls)
            by_name = {s.name: s for s in self.specs}
            if any(n not in by_name for n in writer.layer_names):
                raise RuntimeError(f"layers {writer.layer_names} are not all in this model's selection")
            self.specs = [by_name[n] for n in writer.layer_names]
        self.pooler = Pooler(cfg.layers.pooling, seed=cfg.probe.seed)
        self._strict = True
        self.max_tokens = cfg.probe.max_tokens
        self.writer = writer
        self.run = _runner(self.loaded, self.specs)
        config = getattr(self.loaded.module, "config", None)
        self.kwargs = {"use_cache": False} if config is not None and "use_cache" in config.to_dict() else {}
        # Segment ids only for models with a token-type embedding (BERT's type_vocab_size). GPT-2
        # takes token_type_ids as well but adds their *word* embedding: a BERT-style tokenizer's
        # zeros would shift every position by the embedding of token 0.
        self.token_types = getattr(config, "type_vocab_size", None) is not None
        # Positions counted over real tokens: left padding does not shift them (as HF generate does).
        self.positions = "position_ids" in inspect.signature(self.run.forward).parameters

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def keep_used(self, batch: dict) -> list[str]:
        """Drop the selected modules one forward pass on ``batch`` never calls (``all`` selects them too).

        Returns
        -------
        list of str
            The layer names kept.
        """
        self._strict = False
        try:
            fired = self.pooled(batch)
        finally:
            self._strict = True
        self.specs = [s for s in self.specs if s.name in fired]
        return self.layer_names

    @torch.inference_mode()
    def pooled(self, batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Pooled rows of every selected layer for one batch.

        Parameters
        ----------
        batch : dict
            ``sample_id`` (b,) and ``text`` (b strings) or ``x`` (b, ...) inputs.

        Returns
        -------
        dict
            layer name → (rows (r, d) float32 tensor, row sample ids (r,) int64).
        """
        sids = np.asarray(batch["sample_id"], dtype=np.int64)
        device = self.loaded.device
        with LayerCapture(self.loaded.module, self.specs, self.pooler) as capture:
            if "text" in batch:
                enc = {k: v.to(device) for k, v in tokenize(self.loaded.tokenizer, list(batch["text"]),
                                                             self.max_tokens, sids).items()
                       if k != "token_type_ids" or self.token_types}
                if self.positions:
                    enc["position_ids"] = (enc["attention_mask"].cumsum(1) - 1).clamp_min(0)
                capture.batch(enc["attention_mask"], sids)
                self.run(**enc, **self.kwargs)
            else:
                if self.loaded.kind == "hf":
                    raise GwrayInputError(f"probe: model {self.loaded.path} takes text, the probe holds arrays")
                x = torch.as_tensor(np.stack(list(batch["x"])) if batch["x"].dtype == object else batch["x"])
                param = next(self.loaded.module.parameters(), None)
                if param is not None and x.is_floating_point():
                    x = x.to(param.dtype)
                capture.batch(None, sids)
                self.run(x.to(device))
            return capture.pop(strict=self._strict)

    def __call__(self, batch: dict) -> dict:
        """Write one batch's parts; returns ``{"sample_id": (b,)}`` (what Ray Data passes on)."""
        for name, (rows, row_ids) in self.pooled(batch).items():
            self.writer.write(name, row_ids.numpy(), rows)
        return {"sample_id": np.asarray(batch["sample_id"], dtype=np.int64)}


def layer_names(cfg, checkpoint_path: str | None = None) -> list[str]:
    """The selected layers' names without loading weights (HF: a meta-device module tree)."""
    loaded = load_model(cfg.model, checkpoint_path, device="cpu", meta=True)
    return [s.name for s in select_layers(loaded, cfg.layers.select)]


def _unwrap_input_error(exc: BaseException) -> GwrayInputError | None:
    """The GwrayInputError raised inside a Ray Data actor, if any, as one line.

    Ray Data wraps a UDF's exception in ``UserCodeException`` and keeps the original only as
    traceback text, so the message is recovered from that text.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, GwrayInputError):
            return GwrayInputError(str(exc).strip().splitlines()[-1])
        found = _INPUT_ERROR_RE.search(str(exc))
        if found:
            return GwrayInputError(found.group(1).strip())
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


def _extract_ray(cfg, checkpoint_path, writer: ActivationWriter, probe: ProbeSet, progress: bool) -> int:
    import pandas as pd
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = progress
    blocks = []
    for batch in probe.batches(cfg.probe.batch_size):
        cols = {"sample_id": batch["sample_id"]}
        if "text" in batch:
            cols["text"] = batch["text"]
        else:
            cols["x"] = list(batch["x"])
        blocks.append(pd.DataFrame(cols))
    # One block per batch: map_batches then sees exactly the in-process batches.
    ds = ray.data.from_pandas(blocks).map_batches(
        BatchExtractor, fn_constructor_args=(cfg, checkpoint_path, writer), batch_size=cfg.probe.batch_size,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.resources.extract_actors),
        num_gpus=cfg.resources.gpus_per_extract_actor or None)
    return sum(len(b["sample_id"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))


def _bar(total: int, checkpoint: str, progress: bool) -> tqdm:
    return tqdm(total=total, unit="sample", desc=f"extract {checkpoint}", file=sys.stderr, disable=not progress)


def extract(cfg, out: "Location | str", checkpoint: str, checkpoint_path: str | None = None,
            use_ray: bool = True, progress: bool = True, stage_key: str | None = None) -> dict:
    """Extract one checkpoint's activations into ``OUT/activations/checkpoint=<id>/``.

    Parameters
    ----------
    cfg : gwray.config.RunConfig
    out : Location or str
        The run directory.
    checkpoint : str
        Checkpoint id.
    checkpoint_path : str, optional
        The checkpoint's model directory (default ``cfg.model.path``).
    use_ray : bool
        Ray Data pipeline (Ray must be initialised) or the in-process loop.
    progress : bool
        On stderr: the in-process loop and the sharded path show a tqdm bar (samples done /
        total, rate, ETA; the sharded one between a start and an end line); the Ray Data path,
        whose batches run in actors, prints a start and an end line (samples, seconds).
    stage_key : str, optional
        Recorded in the manifest (``stage_key``): the pipeline's key of the settings the
        activations were made with, readable without ``run.json``.

    Returns
    -------
    dict
        The manifest (layers, dims, n_rows, dtype, pooling, probe hash, ...).

    Raises
    ------
    GwrayInputError
        Bad model, probe or layer selection; NaN/inf in an activation (names layer and sample).
        Nothing is left on disk for the checkpoint.
    """
    probe = load_probe(cfg.probe)
    pooler = Pooler(cfg.layers.pooling, seed=cfg.probe.seed)
    out = Location.parse(out)
    extractor = None
    if cfg.model.shards > 1 or (use_ray and cfg.layers.select != "all"):
        names = layer_names(cfg, checkpoint_path)
    else:  # load here: the in-process worker's layers (for "all": those called) are the dataset's
        extractor = BatchExtractor(cfg, checkpoint_path, device="cpu" if use_ray else None)
        if cfg.layers.select == "all":
            extractor.keep_used(probe.batch(0, min(2, len(probe))))
        names = extractor.layer_names
    writer = ActivationWriter(out, checkpoint, names, dtype=cfg.layers.storage_dtype)
    # Batches that run in actors tick no bar in this process: a start and an end line instead.
    in_actors, t0 = cfg.model.shards > 1 or use_ray, time.perf_counter()
    if progress and in_actors:
        how = f"{cfg.model.shards} shards" if cfg.model.shards > 1 else "Ray Data"
        print(f"extract {checkpoint}: {len(probe)} samples, {len(names)} layers via {how}",
              file=sys.stderr, flush=True)
    try:
        if cfg.model.shards > 1:  # the last shard's finished batches tick a bar here
            from gwray.models.sharded import extract_sharded

            with _bar(len(probe), checkpoint, progress) as bar:
                extract_sharded(cfg, out, checkpoint, checkpoint_path, pooler, writer, probe, tokenize,
                                on_rows=bar.update)
        elif use_ray:
            try:
                done = _extract_ray(cfg, checkpoint_path, writer, probe, progress)
            except Exception as exc:
                err = _unwrap_input_error(exc)
                if err is not None:
                    raise err from None
                raise
            if done != len(probe):
                raise RuntimeError(f"Ray Data extraction returned {done} of {len(probe)} samples")
        else:
            extractor.writer = writer
            with _bar(len(probe), checkpoint, progress) as bar:
                for batch in probe.batches(cfg.probe.batch_size):
                    extractor(batch)
                    bar.update(len(batch["sample_id"]))
        meta = {"pooling": cfg.layers.pooling, "select": cfg.layers.select, "probe_hash": probe.hash,
                "probe_source": probe.source, "max_tokens": cfg.probe.max_tokens, "seed": cfg.probe.seed,
                "model": checkpoint_path or cfg.model.path or cfg.model.factory, "gwray_version": __version__,
                "stage_key": stage_key}
        manifest = writer.commit(meta)
    except BaseException:
        writer.abort()
        raise
    if progress and in_actors:
        print(f"extract {checkpoint}: {len(probe)} samples done in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    return manifest
