"""Issue 13: hierarchy-consistent node scores, category paths, per-depth retrieval and placement."""

import numpy as np
import pytest

from clipita.evaluation import format_per_depth, per_depth_report, suggest_paths
from clipita.results import ResultsError, check_result
from clipita.tree import (
    depth_name,
    leaves_of,
    node_scores,
    rank_paths,
    ranked_prefixes,
    scoring_nodes,
    tree_posterior,
)

NODES = [("A",), ("A", "x"), ("A", "x", "1"), ("A", "x", "2"), ("A", "y"), ("A", "y", "3"), ("B",), ("B", "z"),
         ("B", "z", "4")]  # fmt: skip


def test_depth_names():
    assert [depth_name(d, 3) for d in (1, 2, 3)] == ["root", "depth2", "leaf"]
    assert [depth_name(d, 4) for d in (1, 2, 3, 4)] == ["root", "depth2", "depth3", "leaf"]


def test_scoring_nodes_are_the_seen_descendant_leaves():
    assert leaves_of(NODES) == [("A", "x", "1"), ("A", "x", "2"), ("A", "y", "3"), ("B", "z", "4")]
    assert scoring_nodes(("A",), NODES, "node") == [("A",)]
    assert scoring_nodes(("A", "x"), NODES, "max_leaf") == [("A", "x"), ("A", "x", "1"), ("A", "x", "2")]
    seen = {("A", "x", "1")}
    assert scoring_nodes(("A",), NODES, "max_leaf", seen) == [("A",), ("A", "x", "1")]
    with pytest.raises(ValueError, match="unknown node scoring 'mean'"):
        scoring_nodes(("A",), NODES, "mean")


def test_max_leaf_scores_are_the_max_over_seen_descendant_leaves():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(len(NODES), 5))
    assert node_scores(raw, NODES, "node") is raw
    seen = {("A", "x", "1"), ("A", "y", "3")}
    out = node_scores(raw, NODES, "max_leaf", seen)
    np.testing.assert_allclose(out[0], np.max(raw[[0, 2, 5]], axis=0))  # A: itself, x/1 and y/3 (x/2 unseen)
    np.testing.assert_allclose(out[1], np.maximum(raw[1], raw[2]))
    np.testing.assert_allclose(out[6], raw[6])  # B: no seen leaf below
    np.testing.assert_allclose(out[2:4], raw[2:4])  # leaves keep their own scores


def test_tree_scoring_ranks_a_broad_node_by_the_products_posterior_and_keeps_leaves_and_placement():
    rng = np.random.default_rng(0)
    raw = rng.normal(scale=0.3, size=(len(NODES), 6))
    seen = {("A", "x", "1"), ("A", "y", "3"), ("B", "z", "4")}
    tau = 0.07
    out = node_scores(raw, NODES, "tree", seen, temperature=tau)
    max_leaf = node_scores(raw, NODES, "max_leaf", seen)
    roots, middles = [0, 6], [1, 4, 7]
    for rows in (roots, middles):  # tau * log softmax over the nodes of the depth, per product
        x = max_leaf[rows] / tau
        expected = tau * (x - np.log(np.exp(x).sum(axis=0)))
        np.testing.assert_allclose(out[rows], expected, atol=1e-9)
    leaves = [2, 3, 5, 8]
    np.testing.assert_allclose(out[leaves], raw[leaves])  # leaves keep their own score
    for rows in (roots, middles):  # per product a constant per depth: its best node does not change
        assert (out[rows].argmax(axis=0) == max_leaf[rows].argmax(axis=0)).all()
    with pytest.raises(ValueError, match="needs the model's temperature"):
        node_scores(raw, NODES, "tree", seen)


def test_marginal_scoring_is_the_mean_of_the_depth_and_the_leaf_posteriors():
    rng = np.random.default_rng(1)
    raw = rng.normal(scale=0.3, size=(len(NODES), 6)).astype(np.float32)
    tau = 0.05
    out = node_scores(raw, NODES, "marginal", seen={("A", "x", "1")}, temperature=tau)

    def softmax(rows):
        x = np.exp(raw[rows].astype(np.float64) / tau)
        return x / x.sum(axis=0)

    leaves = [2, 3, 5, 8]
    leaf = dict(zip(leaves, softmax(leaves)))
    roots, middles = [0, 6], [1, 4, 7]
    below = {0: [2, 3, 5], 6: [8], 1: [2, 3], 4: [5], 7: [8]}  # every leaf below, seen or not
    for rows in (roots, middles):
        depth = dict(zip(rows, softmax(rows)))
        for i in rows:
            probability = 0.5 * depth[i] + 0.5 * sum(leaf[k] for k in below[i])
            np.testing.assert_allclose(out[i], tau * np.log(probability), rtol=1e-5)
    np.testing.assert_allclose(out[leaves], raw[leaves])  # leaves keep their own score
    assert out.dtype == raw.dtype and (out[[0, 1, 4, 6, 7]] < 0).all()  # log-probabilities
    assert scoring_nodes(("A",), NODES, "marginal", seen={("A", "x", "1")}) == [
        ("A",),
        *[NODES[k] for k in below[0]],
    ]
    with pytest.raises(ValueError, match="needs the model's temperature"):
        node_scores(raw, NODES, "marginal")


def test_marginal_scoring_ranks_a_product_its_leaves_claim_above_one_only_the_node_claims():
    """Product 0 is a hub for the broad node A's own text; product 1 is claimed by A's leaf. The node's own
    score puts the hub first; the subtree's leaves reverse it."""
    nodes = [("A",), ("A", "x"), ("B",), ("B", "y")]
    raw = np.array([[0.70, 0.60], [0.10, 0.90], [0.65, 0.20], [0.60, 0.10]])
    out = node_scores(raw, nodes, "marginal", temperature=0.05)
    assert raw[0].argmax() == 0 and out[0].argmax() == 1


def test_tree_scoring_stops_a_hub_product_from_topping_every_broad_node():
    """Product 0 is close to every root (a hub); products 1 and 2 each belong clearly to one root. By the raw
    score the hub tops both roots; read against its own depth it ranks below each root's own product."""
    roots = [("A",), ("B",)]
    raw = np.array([[0.60, 0.50, 0.10], [0.60, 0.10, 0.50]])
    assert raw[0].argmax() == 0 and raw[1].argmax() == 0
    nodes = [*roots, ("A", "x"), ("B", "y")]
    scores = tree_posterior(np.vstack([raw, raw]), nodes, 0.07)
    assert scores[0].argmax() == 1 and scores[1].argmax() == 2


def test_rank_paths_scores_a_path_by_the_mean_of_its_nodes():
    raw = np.zeros((len(NODES), 1))
    raw[6, 0], raw[7, 0], raw[8, 0] = 0.9, 0.1, 0.1  # B path: mean 0.367
    raw[0, 0], raw[1, 0], raw[3, 0] = 0.5, 0.5, 0.5  # A > x > 2: mean 0.5
    paths, order = rank_paths(raw, NODES, top=4)
    assert [paths[i] for i in order[0][:2]] == [("A", "x", "2"), ("B", "z", "4")]
    assert ranked_prefixes(paths, order[0], 1) == [("A",), ("B",)]
    assert ranked_prefixes(paths, order[0], 2)[:2] == [("A", "x"), ("B", "z")]


def _embeddings():
    """Products embedded next to their leaf, with a known-leaf and a new-leaf product per root."""
    node_embeds = np.eye(len(NODES), dtype=np.float32)
    product_paths = [("A", "x", "1"), ("A", "x", "2"), ("A", "y", "3"), ("B", "z", "4")]
    position = {n: i for i, n in enumerate(NODES)}
    product_embeds = np.stack(
        [node_embeds[position[p]] + 0.1 * node_embeds[position[p[:1]]] for p in product_paths]
    )
    train_paths = [("A", "x", "1"), ("A", "y", "3"), ("B", "z", "4")]  # A > x > 2 is a new type
    return product_embeds, node_embeds, product_paths, train_paths


def test_per_depth_report_splits_depths_groups_and_scorings():
    product_embeds, node_embeds, product_paths, train_paths = _embeddings()
    node = per_depth_report(product_embeds, node_embeds, NODES, product_paths, train_paths, "node")
    assert list(node["retrieval"]) == ["root", "depth2", "leaf"]
    leaf = node["retrieval"]["leaf"]
    assert leaf["seen"]["num_queries"] == 3 and leaf["unseen"]["num_queries"] == 1
    assert leaf["all"]["P@10"] == pytest.approx(0.1)  # each leaf query: its one product first
    assert "new_leaves" not in leaf and node["retrieval"]["root"]["new_leaves"]["num_queries"] == 1
    assert node["placement"]["leaf"]["known"] == {"top1": 1.0, "top3": 1.0, "num_products": 3}
    assert node["placement"]["root"]["new"]["num_products"] == 1
    # the new-type product lies on its own leaf's axis: the suggested path is its own
    assert node["path_placement"]["leaf"]["new"]["top1"] == 1.0
    max_leaf = per_depth_report(product_embeds, node_embeds, NODES, product_paths, train_paths, "max_leaf")
    assert max_leaf["node_scoring"] == "max_leaf"
    assert max_leaf["retrieval"]["leaf"] == node["retrieval"]["leaf"]  # leaves have no descendants
    result = {"settings": {"all": {}}, "per_depth": max_leaf}
    check_result(result)
    text = format_per_depth({"m": result})
    assert "| depth2 |" in text and "node: new" in text
    tree = per_depth_report(
        product_embeds, node_embeds, NODES, product_paths, train_paths, "tree", temperature=0.07
    )
    assert tree["node_scoring"] == "tree" and tree["retrieval"]["leaf"] == node["retrieval"]["leaf"]
    # placement reads the nodes' own scores, as the category suggestion does, whatever the node scoring
    assert tree["placement"] == max_leaf["placement"] == node["placement"]
    assert tree["path_placement"] == max_leaf["path_placement"] == node["path_placement"]


def test_per_depth_results_are_checked():
    bad = {"settings": {"all": {}}, "per_depth": {"retrieval": {"root": {"all": {"P@10": 3.0}}}}}
    with pytest.raises(ResultsError, match=r"per_depth\.retrieval\.root\.all\.P@10"):
        check_result(bad)


def test_suggest_paths_returns_tree_consistent_paths_best_first():
    product_embeds, node_embeds, product_paths, _ = _embeddings()
    product_embeds = np.vstack([product_embeds, np.full((1, len(NODES)), np.nan, np.float32)])
    suggestions = suggest_paths(product_embeds, node_embeds, NODES, top=2)
    assert [s[0][0] for s in suggestions[:4]] == product_paths
    assert all(len(s) == 2 and s[0][1] >= s[1][1] for s in suggestions[:4])
    assert suggestions[4] == []


def test_placement_reads_the_nodes_own_scores_not_their_seen_leaves():
    """A new type (A > x > 2) whose product shares a word with a seen leaf of another root (B > z > 4): its
    own nodes score highest, but max over seen leaves would lift root B above A for it."""
    product_embeds, node_embeds, product_paths, train_paths = _embeddings()
    position = {n: i for i, n in enumerate(NODES)}
    new = product_paths.index(("A", "x", "2"))
    product_embeds = product_embeds.copy()
    product_embeds[new] = (
        0.6 * node_embeds[position[("A",)]]
        + 0.6 * node_embeds[position[("A", "x")]]
        + 0.7 * node_embeds[position[("B", "z", "4")]]
    )
    node = per_depth_report(product_embeds, node_embeds, NODES, product_paths, train_paths, "node")
    tree = per_depth_report(
        product_embeds, node_embeds, NODES, product_paths, train_paths, "tree", temperature=0.07
    )
    assert node["placement"]["root"]["new"]["top1"] == 1.0
    assert tree["placement"] == node["placement"]
    scores = node_scores(node_embeds @ product_embeds.T, NODES, "max_leaf", {tuple(p) for p in train_paths})
    assert scores[position[("B",)], new] > scores[position[("A",)], new]  # what max_leaf would have placed
