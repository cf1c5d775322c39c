"""The activation dataset: one hive partition per checkpoint and layer, a manifest written last.

Layout (under the run directory ``OUT``)::

    OUT/activations/checkpoint=<id>/layer=<name>/part-<j>.parquet   sample_id: int64,
                                                                     vector: list<float32|float16>
    OUT/activation_manifests/<id>.json                               written last, atomically

``OUT/activations`` holds Parquet files only, so pandas, ``pyarrow.dataset`` (hive partitioning)
and duckdb (``read_parquet('OUT/activations/**')``) read it as one dataset whose rows carry their
``checkpoint`` and ``layer`` (the layer's name, as in ``pairs`` and ``gw_matrix``; characters
other than letters, digits and ``._-~`` are %-escaped as hive partitions are). ``vector`` is a
variable-size list so that layers of different widths share one schema; its width is in the
manifest's ``dims``. ``j`` is the first sample id of the batch that wrote the part (zero-padded),
so a retried batch overwrites its own part and parts list in sample order. A checkpoint without
its manifest is incomplete: readers refuse it and a new writer deletes it. Reading one layer
opens only that layer's files (plus the manifest). All I/O goes through
:class:`gwray.storage.Location`, so ``s3://`` works as a local folder does.

The manifest records each layer's parts and bytes, so that a listing tells whether a part went
missing or was cut short since (:meth:`ActivationStore.damage`); a damaged manifest or part found
while reading raises :class:`~gwray.errors.GwrayDamagedError` naming the file.
"""
from __future__ import annotations

import posixpath
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from gwray.errors import GwrayDamagedError, GwrayInputError, damaged
from gwray.storage import Location

MANIFESTS = "activation_manifests"  # beside OUT/activations: the dataset tree holds Parquet only
FORMAT_VERSION = 3  # 3: the manifest's ``parts`` (layer → [parts, bytes])
_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


def activations_dir(root: "Location | str") -> Location:
    """``OUT/activations`` for a run directory ``OUT`` (a path already ending in ``activations`` is kept)."""
    loc = Location.parse(root)
    return loc if loc.name == "activations" else loc.child("activations")


def _checkpoint_dir(root: Location, checkpoint: str) -> Location:
    if not checkpoint or "/" in checkpoint or checkpoint.startswith((".", "_")):
        raise GwrayInputError(f"checkpoint id {checkpoint!r}: must be a non-empty name without '/'")
    return root.child(f"checkpoint={checkpoint}")


def _manifests_dir(root: Location) -> Location:
    return Location(root.fs, posixpath.dirname(root.path)).child(MANIFESTS)


def _manifest_file(root: Location, checkpoint: str) -> Location:
    _checkpoint_dir(root, checkpoint)  # the same id rules
    return _manifests_dir(root).child(f"{checkpoint}.json")


def _layer_partition(name: str) -> str:
    """``layer=<name>``, escaped as pyarrow and duckdb unescape hive partition values."""
    return f"layer={quote(name, safe='')}"


def _damaged(checkpoint: str, what: str) -> GwrayDamagedError:
    return damaged(what, ("activations", checkpoint), f"rerun `gwray run` to extract checkpoint {checkpoint} again")


def _vectors_to_numpy(column: "pa.ChunkedArray | pa.Array", d: int) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)


class ActivationWriter:
    """Write one checkpoint's activations, one part per (layer, batch).

    Creating a writer deletes whatever the checkpoint's directory and manifest held (a checkpoint
    is rebuilt whole). The object pickles cheaply and keeps no counters, so copies in Ray actors or shard
    actors may call :meth:`write` concurrently; :meth:`commit` scans the parts.

    Parameters
    ----------
    root : Location or str
        The run directory ``OUT`` (or ``OUT/activations``).
    checkpoint : str
        Checkpoint id (directory ``checkpoint=<id>``).
    layer_names : list of str
        All layers of the checkpoint, in depth order.
    dtype : {"float32", "float16"}
        Storage dtype of the vectors.
    """

    def __init__(self, root: "Location | str", checkpoint: str, layer_names: list[str], dtype: str = "float32"):
        if dtype not in _DTYPES:
            raise GwrayInputError(f"storage dtype {dtype!r}: expected float32 or float16")
        if not layer_names or len(set(layer_names)) != len(layer_names):
            raise GwrayInputError(f"layer names {layer_names!r}: must be non-empty and unique")
        self.root = activations_dir(root)
        self.checkpoint = checkpoint
        self.dir = _checkpoint_dir(self.root, checkpoint)
        self.layer_names = list(layer_names)
        self.dtype = dtype
        self.abort()

    def write(self, layer_name: str, sample_ids, vectors) -> Location:
        """Append one part for ``layer_name``.

        Parameters
        ----------
        layer_name : str
        sample_ids : array-like of int, shape (r,)
        vectors : array-like or torch.Tensor, shape (r, d)

        Returns
        -------
        Location
            The part written.

        Raises
        ------
        GwrayInputError
            Unknown layer, shape mismatch, or NaN/inf (naming the layer and the first bad sample).
        """
        if layer_name not in self.layer_names:
            raise GwrayInputError(f"layer {layer_name!r}: not one of this writer's layers")
        if hasattr(vectors, "detach"):
            vectors = vectors.detach().cpu().numpy()
        vec = np.asarray(vectors, dtype=np.float32)
        sids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
        if vec.ndim != 2 or vec.shape[0] != sids.shape[0] or vec.shape[0] == 0:
            raise GwrayInputError(f"layer {layer_name}: vectors of shape {vec.shape} for {sids.shape[0]} sample ids")
        bad = ~np.isfinite(vec).all(axis=1)
        if bad.any():
            sid = int(sids[np.argmax(bad)])
            raise GwrayInputError(f"layer {layer_name}: NaN or inf in the activation of sample {sid}")
        vec = vec.astype(np.float16) if self.dtype == "float16" else vec
        if self.dtype == "float16" and not np.isfinite(vec).all():
            sid = int(sids[np.argmax(~np.isfinite(vec).all(axis=1))])
            raise GwrayInputError(f"layer {layer_name}: activation of sample {sid} overflows float16")
        n, d = vec.shape
        values = pa.array(vec.reshape(-1), type=_DTYPES[self.dtype])
        offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
        table = pa.table({"sample_id": pa.array(sids, pa.int64()),
                          "vector": pa.ListArray.from_arrays(offsets, values)})
        part = self.dir.child(_layer_partition(layer_name), f"part-{int(sids.min()):012d}.parquet")
        part.write_table(table)
        return part

    def commit(self, meta: dict | None = None) -> dict:
        """Check that every layer has the same rows, then write the manifest (last, atomically).

        Parameters
        ----------
        meta : dict, optional
            Extra keys for the manifest (pooling, probe hash, model path, ...).

        Returns
        -------
        dict
            The manifest: ``checkpoint``, ``layers``, ``dims``, ``n_rows``, ``n_samples``, ``dtype``,
            ``parts`` (layer → [parts, bytes]), ``format`` and the ``meta`` keys.
        """
        dims, reference, sizes = [], None, {}
        for name in self.layer_names:
            listed = self.dir.child(_layer_partition(name)).file_sizes(".parquet")
            if not listed:
                raise RuntimeError(f"activation dataset {self.dir}: layer {name} has no rows")
            sizes[name] = [len(listed), sum(listed.values())]
            parts = [Location(self.dir.fs, path) for path in listed]
            ids = [p.read_table(columns=["sample_id"]).column(0).to_numpy() for p in parts]
            ids = np.sort(np.concatenate(ids))
            if reference is None:
                reference = ids
            elif not np.array_equal(ids, reference):
                raise RuntimeError(f"activation dataset {self.dir}: layer {name} rows differ from layer "
                                   f"{self.layer_names[0]}")
            first = parts[0].read_table(columns=["vector"]).column(0)
            dims.append(len(first[0]))
        manifest = dict(meta or {})
        manifest.update(checkpoint=self.checkpoint, layers=self.layer_names, dims=dims,
                        n_rows=int(reference.size), n_samples=int(np.unique(reference).size),
                        dtype=self.dtype, parts=sizes, format=FORMAT_VERSION)
        _manifest_file(self.root, self.checkpoint).write_json(manifest)
        return manifest

    def abort(self) -> None:
        """Remove the checkpoint's manifest and partitions."""
        ActivationStore(self.root).remove(self.checkpoint)


class ActivationStore:
    """Read an activation dataset.

    Parameters
    ----------
    root : Location or str
        The run directory ``OUT`` (or ``OUT/activations``).
    """

    def __init__(self, root: "Location | str"):
        self.root = activations_dir(root)
        self._manifests: dict[str, dict] = {}

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.root)!r})"

    def checkpoints(self) -> list[str]:
        """Ids of the complete checkpoints (those with a manifest), sorted by name."""
        return sorted(f.name[:-len(".json")] for f in _manifests_dir(self.root).files(".json"))

    def is_complete(self, checkpoint: str) -> bool:
        return _manifest_file(self.root, checkpoint).exists()

    def remove(self, checkpoint: str) -> None:
        """Delete a checkpoint's activations, manifest first (so that it reads as incomplete)."""
        _manifest_file(self.root, checkpoint).remove()
        _checkpoint_dir(self.root, checkpoint).remove()
        self._manifests.pop(checkpoint, None)

    def manifest(self, checkpoint: str) -> dict:
        """The checkpoint's manifest (cached).

        Raises
        ------
        GwrayInputError
            The checkpoint is missing or incomplete.
        """
        if checkpoint not in self._manifests:
            loc = _manifest_file(self.root, checkpoint)
            if not loc.exists():
                raise GwrayInputError(f"checkpoint {checkpoint!r}: no complete activations in {self.root}")
            try:
                manifest = loc.read_json()
            except GwrayInputError as exc:  # not JSON
                raise _damaged(checkpoint, str(exc)) from None
            if not (isinstance(manifest, dict) and isinstance(manifest.get("layers"), list)
                    and isinstance(manifest.get("dims"), list)):
                raise _damaged(checkpoint, f"{loc}: damaged, not an activation manifest")
            self._manifests[checkpoint] = manifest
        return self._manifests[checkpoint]

    def damage(self, checkpoint: str) -> str | None:
        """What is wrong with a complete checkpoint's files, as far as one listing tells: a
        damaged manifest, a layer with parts missing or cut short (fewer parts or bytes than the
        manifest recorded; manifests before format 3 record none, so only empty layers show);
        None when nothing is."""
        try:
            manifest = self.manifest(checkpoint)
        except GwrayDamagedError:
            return f"its manifest {MANIFESTS}/{checkpoint}.json is damaged"
        listed: dict[str, list[int]] = {}
        for path, size in _checkpoint_dir(self.root, checkpoint).file_sizes(".parquet", recursive=True).items():
            listed.setdefault(posixpath.basename(posixpath.dirname(path)), []).append(size)
        for name in manifest["layers"]:
            got, want = listed.get(_layer_partition(name), []), manifest.get("parts", {}).get(name)
            if want is not None and [len(got), sum(got)] != want:
                return f"layer {name} holds {len(got)} of its {want[0]} parts, {sum(got):,} of {want[1]:,} bytes"
            if not got:
                return f"layer {name} has no parts"
        return None

    def layer_names(self, checkpoint: str) -> list[str]:
        return list(self.manifest(checkpoint)["layers"])

    def _layer_dir(self, checkpoint: str, layer: "str | int") -> tuple[Location, int]:
        names = self.layer_names(checkpoint)
        if isinstance(layer, (int, np.integer)) and 0 <= layer < len(names):
            k = int(layer)
        elif layer in names:
            k = names.index(layer)
        else:
            raise GwrayInputError(f"layer {layer!r}: not in checkpoint {checkpoint!r} (has {len(names)} layers)")
        return _checkpoint_dir(self.root, checkpoint).child(_layer_partition(names[k])), k

    def read_layer(self, checkpoint: str, layer: "str | int") -> np.ndarray:
        """One layer as an (n, d) float32 array, rows in sample_id order.

        Only the files of ``layer=<name>`` are opened. ``layer`` is a name or a position.
        """
        folder, k = self._layer_dir(checkpoint, layer)
        d = self.manifest(checkpoint)["dims"][k]
        table = self._read_parts(checkpoint, folder, ["sample_id", "vector"])
        order = np.argsort(table.column("sample_id").to_numpy(), kind="stable")
        try:
            vectors = _vectors_to_numpy(table.column("vector"), d)
        except (ValueError, pa.ArrowException) as exc:
            raise _damaged(checkpoint, f"activation layer {folder}: vectors are not {d} wide ({exc})") from None
        return vectors[order].astype(np.float32, copy=False)

    def sample_ids(self, checkpoint: str) -> np.ndarray:
        """(n,) int64 sample ids of the rows :meth:`read_layer` returns, in that order."""
        folder, _ = self._layer_dir(checkpoint, 0)
        table = self._read_parts(checkpoint, folder, ["sample_id"])
        return np.sort(table.column("sample_id").to_numpy(), kind="stable")

    def _read_parts(self, checkpoint: str, folder: Location, columns: list[str]) -> pa.Table:
        """A layer's parts as one table; a part that cannot be read, or rows other than the
        manifest's, raise GwrayDamagedError naming the part or the layer."""
        tables = []
        for part in folder.files(".parquet"):
            try:
                tables.append(part.read_table(columns=columns))
            except (pa.ArrowException, OSError) as exc:
                why = str(exc).strip().splitlines()[0].rsplit("': ", 1)[-1]  # not the path again
                raise _damaged(checkpoint, f"activation part {part}: unreadable ({why})") from None
        rows = sum(t.num_rows for t in tables)
        if rows != self.manifest(checkpoint)["n_rows"]:
            raise _damaged(checkpoint, f"activation layer {folder}: {rows} rows, the manifest says "
                                       f"{self.manifest(checkpoint)['n_rows']} (a part is missing)")
        return pa.concat_tables(tables)
