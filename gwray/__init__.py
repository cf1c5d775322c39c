"""gwray: find sub-networks inside neural networks with Gromov-Wasserstein distances on Ray.

The public API. Names resolve lazily so that ``import gwray`` stays cheap (no torch, Ray or
transformers until a function that needs them is used).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "cost_matrix": "gwray.gw.costs",
    "gromov_wasserstein": "gwray.gw.solver",
    "GWResult": "gwray.gw.solver",
    "pairwise_gw": "gwray.gw.pairwise",
    "find_subnetworks": "gwray.graph.communities",
    "run": "gwray.pipeline",
    "load_run": "gwray.result",
    "RunResult": "gwray.result",
    "GwrayInputError": "gwray.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gwray' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__():
    return __all__
