"""The run schema: one YAML file says everything a run does (DESIGN.md, "Run config").

Every key has a default, so a three-line config works. Unknown keys and bad values raise
:class:`~gwray.errors.GwrayInputError` naming the key, e.g. ``config key gw.max_iter: ...``.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gwray.errors import GwrayInputError

POOLING_RE = re.compile(r"^(mean|last|first|flatten|tokens:[1-9][0-9]*)$")
#: Samples drawn when ``probe.n_samples`` is not set (a smaller probe is used whole).
DEFAULT_N_SAMPLES = 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    source: Literal["hf", "factory", "toy"] = "hf"
    path: str | None = "minilm"
    factory: str | None = None
    checkpoints: Union[list[str], str, None] = None
    shards: int = Field(1, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, v):
        if v is not None and ":" not in v:
            raise ValueError("must look like 'pkg.module:function'")
        return v


class ProbeConfig(_Section):
    source: str = "builtin:english"
    field: str = "text"
    n_samples: int | None = Field(None, ge=2)  # None: the whole probe, at most DEFAULT_N_SAMPLES
    max_tokens: int = Field(64, ge=1)
    seed: int = 0
    batch_size: int = Field(32, ge=1)


class LayersConfig(_Section):
    select: Union[Literal["blocks", "all"], list[str]] = "blocks"
    pooling: str = "mean"
    storage_dtype: Literal["float32", "float16"] = "float32"

    @field_validator("pooling")
    @classmethod
    def _pooling_form(cls, v):
        if not POOLING_RE.match(v):
            raise ValueError("must be mean, last, first, flatten or tokens:K (K >= 1)")
        return v


class CostsConfig(_Section):
    metric: Literal["euclidean", "sqeuclidean", "cosine", "correlation"] = "euclidean"
    normalize: Literal["mean", "max", "median", "none"] = "mean"


class GWConfig(_Section):
    starts: list[str] = ["identity", "mixed", "product", "entropic", "random:auto"]
    max_iter: int = Field(200, ge=1)
    tol: float = Field(1e-9, ge=0)
    baselines: list[Literal["cka", "rsa", "identity"]] = []
    # the previous checkpoint's solver state (plan, duals) starts each pair, and only the
    # configured starts that ended within warm_keep x the pair's best run (gwray.gw.warm)
    warm_start: bool = False
    warm_keep: float = Field(1.12, ge=1)


class CompareConfig(_Section):
    cross: Literal["none", "consecutive", "all", "final"] = "consecutive"


class ResourcesConfig(_Section):
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    batch_pairs: int = Field(8, ge=1)
    gpu_batch_pairs: int = Field(512, ge=1)
    pair_file_rows: int = Field(5000, ge=0)
    extract_actors: int = Field(1, ge=1)
    gpus_per_extract_actor: float = Field(0, ge=0)
    gpus_per_shard: float = Field(0, ge=0)


def _auto_or_at_least(low: int):
    """A field validator: the value is "auto" or an integer ≥ ``low``."""
    def check(cls, v):
        if isinstance(v, int) and v < low:
            raise ValueError(f"must be 'auto' or an integer >= {low}")
        return v
    return classmethod(check)


class GraphConfig(_Section):
    method: Literal["contiguous", "louvain", "greedy", "spectral", "all"] = "contiguous"
    k: Union[Literal["auto"], int] = "auto"
    alpha: float = Field(0.05, gt=0, lt=1)
    null_draws: int = Field(99, ge=0)

    _k_positive = field_validator("k")(_auto_or_at_least(1))


class StabilityConfig(_Section):
    resamples: Union[Literal["auto"], int] = "auto"
    fraction: float = Field(0.8, gt=0, le=1)
    seed: int = 0

    _resamples_form = field_validator("resamples")(_auto_or_at_least(0))


class RunConfig(_Section):
    name: str = "run"
    output: str | None = None
    model: ModelConfig = ModelConfig()
    probe: ProbeConfig = ProbeConfig()
    layers: LayersConfig = LayersConfig()
    costs: CostsConfig = CostsConfig()
    gw: GWConfig = GWConfig()
    compare: CompareConfig = CompareConfig()
    resources: ResourcesConfig = ResourcesConfig()
    graph: GraphConfig = GraphConfig()
    stability: StabilityConfig = StabilityConfig()

    def hash(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none): what a stage depends on."""
        data = self.model_dump(mode="json")
        if sections:
            data = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _closest_key(path: list[str]) -> str:
    """`` (did you mean section.key?)`` for an unknown key at ``path``, or ``""``."""
    section: type[BaseModel] = RunConfig
    for part in path[:-1]:
        field = section.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        section = field.annotation
    match = difflib.get_close_matches(path[-1], list(section.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {'.'.join([*path[:-1], match[0]])}?)" if match else ""


def _error_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    path = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal["))]
    key = ".".join(path)
    if err["type"] == "extra_forbidden":
        return f"config key {key}: unknown key{_closest_key(path)}"
    return f"config key {key}: {err['msg']} (got {err.get('input')!r})"


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise GwrayInputError(f"config key {dotted}: {part} is not a section")
    node[last] = value


def parse_overrides(pairs: list[str]) -> dict:
    """``["gw.max_iter=50", "model.path=/m"]`` → nested dict; values are parsed as YAML scalars."""
    data: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise GwrayInputError(f"override {pair!r}: expected key.sub=value")
        key, raw = pair.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw else None)
    return data


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict:
    """The mapping a YAML config file holds (GwrayInputError naming the file, and where it fails)."""
    if path.is_dir():
        raise GwrayInputError(f"config file {path}: is a directory, not a YAML file")
    if not path.is_file():
        raise GwrayInputError(f"config file {path}: not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GwrayInputError(f"config file {path}{where}: invalid YAML ({what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GwrayInputError(f"config file {path}: cannot be read ({exc})") from None
    if data is None:
        raise GwrayInputError(f"config file {path}: empty (a config needs at least one key; "
                              "`gwray demo` runs the built-in demo)")
    if not isinstance(data, dict):
        raise GwrayInputError(f"config file {path}: must be a mapping of keys")
    return data


def load_config(source: "str | Path | dict | RunConfig | None" = None,
                overrides: "list[str] | dict | None" = None) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML path, a dict or a config, plus overrides.

    Raises
    ------
    GwrayInputError
        Missing file or a directory, invalid YAML (with its line and column), an empty file,
        YAML that is not a mapping, unknown key (with the closest valid key), bad value.
    """
    if isinstance(source, RunConfig):
        data = source.model_dump(mode="json")
    elif isinstance(source, dict):
        data = source
    elif source is None:
        data = {}
    else:
        data = _read_yaml(Path(source))
    if overrides:
        data = _merge(data, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise GwrayInputError(_error_line(exc)) from None
