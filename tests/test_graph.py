"""gwray.graph.build: distance checks, the stated kernel, kNN sparsification, node names."""
import networkx as nx
import numpy as np
import pytest

from gwray.errors import GwrayInputError
from gwray.graph.build import build_graph, check_distances, kernel_sigma, knn_mask, similarity


def _line(L=6):
    x = np.arange(L, dtype=float)
    return np.abs(x[:, None] - x[None, :])


def test_graph_has_named_nodes_and_kernel_weights():
    D = _line(5)
    G = build_graph(D, names=list("abcde"))
    assert isinstance(G, nx.Graph) and G.number_of_nodes() == 5 and G.number_of_edges() == 10
    assert [G.nodes[i]["name"] for i in range(5)] == list("abcde")
    sigma = float(np.median(D[~np.eye(5, dtype=bool)]))
    assert G.graph["sigma"] == pytest.approx(sigma) == kernel_sigma(D)
    assert G[0][3]["weight"] == pytest.approx(np.exp(-(3 / sigma) ** 2))
    assert G[0][3]["distance"] == 3.0
    S = similarity(D)
    assert np.allclose(np.diag(S), 1.0) and S[0, 1] > S[0, 4]


def test_knn_sparsifies_symmetrically():
    D = _line(8)
    mask = knn_mask(D, 1)
    assert (mask == mask.T).all() and not mask.diagonal().any()
    G = build_graph(D, knn=1)
    assert set(G.edges) == {(i, i + 1) for i in range(7)}
    with pytest.raises(GwrayInputError, match="knn"):
        build_graph(D, knn=8)


def test_check_symmetrises_and_clips_solver_noise():
    D = _line(4)
    D[0, 1] += 1e-9
    D[2, 3] = -1e-12
    D[3, 2] = -1e-12
    A, names = check_distances(D)
    assert (A == A.T).all() and A.min() >= 0 and names == ["0", "1", "2", "3"]


@pytest.mark.parametrize("D, match", [
    (np.zeros((3, 4)), "D: must be a non-empty square"),
    (np.array([[0, 1.0], [2.0, 0]]), r"D: not symmetric: D\[0,1\]"),
    (np.array([[0, -1.0], [-1.0, 0]]), "D: negative distance"),
    (np.array([[0, np.nan], [np.nan, 0]]), "D: non-finite entry nan"),
    ([["a", "b"], ["c", "d"]], "D: not a numeric matrix"),
])
def test_bad_matrices(D, match):
    with pytest.raises(GwrayInputError, match=match) as e:
        build_graph(D)
    assert "\n" not in str(e.value)


def test_bad_names():
    with pytest.raises(GwrayInputError, match="names: 2 names for a 3×3"):
        check_distances(_line(3), ["a", "b"])
    with pytest.raises(GwrayInputError, match="names: duplicated layer name 'a'"):
        check_distances(_line(3), ["a", "b", "a"])
