"""The embedded catalogue: determinism, split and unseen invariants, the structure behind the CLIP-I/IA/ITA ladder."""

import collections
import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipita import catalogue as cat
from clipita.schema import FEATURES, SPLITS
from clipita.tree import seen_nodes


def _rows(folder):
    """All rows of a generated catalogue as {product_id: row}, split included."""
    out = {}
    for split in SPLITS:
        for f in sorted((folder / split).glob("*.parquet")):
            for row in pq.read_table(f).to_pylist():
                out[row["product_id"]] = dict(row, split=split)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return cat.generate_catalogue(
        tmp_path_factory.mktemp("cat") / "a", num_products=160, seed=3, image_size=32, progress=False
    )


def test_tree_shape():
    paths = [leaf.path for leaf in cat.LEAVES]
    assert len({p[0] for p in paths}) >= 8
    assert len(paths) >= 40
    assert all(len(p) == 3 and all(p) for p in paths)
    assert len({p[-1] for p in paths}) == len(paths), "leaf names must be unique"
    assert all(leaf.ptype in cat.TYPES for leaf in cat.LEAVES)
    assert len({leaf.ptype for leaf in cat.LEAVES}) >= 20


def test_held_out_leaves_are_compositional():
    for seed in range(20):
        held = cat.held_out_leaves(seed)
        assert abs(len(held) - 0.15 * len(cat.LEAVES)) <= 1
        seen = [leaf for i, leaf in enumerate(cat.LEAVES) if i not in held]
        for i in held:
            leaf = cat.LEAVES[i]
            assert any(s.ptype == leaf.ptype for s in seen), leaf.path
            assert not leaf.variant or any(s.variant == leaf.variant for s in seen), leaf.path
            assert any(s.path[:2] == leaf.path[:2] for s in seen), leaf.path
    assert cat.held_out_leaves(0) != cat.held_out_leaves(1)


def test_generation_is_deterministic(small, tmp_path):
    again = cat.generate_catalogue(tmp_path / "b", num_products=160, seed=3, image_size=32, progress=False)
    assert _rows(small) == _rows(again)
    other = cat.generate_catalogue(tmp_path / "c", num_products=160, seed=4, image_size=32, progress=False)
    assert _rows(other) != _rows(small)


def test_rows_do_not_depend_on_sharding_or_processes(small, tmp_path):
    sharded = cat.generate_catalogue(
        tmp_path / "d", num_products=160, seed=3, image_size=32, shard_size=25, num_proc=2, progress=False
    )
    assert len(list((sharded / "train").glob("*.parquet"))) > 1
    assert _rows(sharded) == _rows(small)


def test_split_and_unseen_invariants():
    n = 20000
    leaf_of, split_of, held = cat.plan_catalogue(n, 0, 0.15, 0.1, 0.15)
    held_mask = np.isin(leaf_of, held)
    assert (split_of[held_mask] == 2).all(), "unseen leaves appear only in test"
    seen_mask = ~held_mask
    fractions = np.bincount(split_of[seen_mask], minlength=3) / seen_mask.sum()
    assert abs(fractions[1] - 0.1) < 0.02 and abs(fractions[2] - 0.15) < 0.02
    test_leaves = set(leaf_of[split_of == 2].tolist())
    assert set(held) < test_leaves, "test holds unseen and seen leaves"
    # the unseen leaves computed from the train paths are exactly the held-out ones
    seen = seen_nodes(cat.LEAVES[i].path for i in set(leaf_of[split_of == 0].tolist()))
    unseen = {i for i in range(len(cat.LEAVES)) if cat.LEAVES[i].path not in seen}
    assert unseen == set(held)


def test_written_catalogue(small):
    info = json.loads((small / "catalogue.json").read_text())
    rows = _rows(small)
    assert len(rows) == 160 == sum(info["sizes"].values())
    held = set(info["held_out"])
    for row in rows.values():
        assert (" > ".join(row["category"]) in held) <= (row["split"] == "test")
        assert 1 <= len(row["attributes"]) <= 8
        assert all(": " in a for a in row["attributes"])
        assert row["title"].strip()
    assert cat.catalogue_matches(small, num_products=160, seed=3, image_size=32)
    assert not cat.catalogue_matches(small, num_products=161, seed=3, image_size=32)


def test_datasets_reads_the_layout(small):
    ds = datasets.load_dataset("parquet", data_dir=str(small))
    assert set(ds) == set(SPLITS)
    assert ds["train"].features == FEATURES
    img = ds["train"][0]["image"]
    assert isinstance(img, Image.Image) and img.size == (32, 32)


def test_products_carry_the_structure_of_the_ladder():
    """Attribute-only leaves share their image distribution with a sibling and differ in an attribute;
    title-only leaves share image and attributes with a sibling and differ only in the title."""
    by_parent = collections.defaultdict(list)
    for leaf in cat.LEAVES:
        by_parent[leaf.path[:2]].append(leaf)

    def looks(leaf):
        t = cat.TYPES[leaf.ptype]
        drawn = {(cat.MATERIALS[m].texture, cat.MATERIALS[m].colours) for m in leaf.materials or t.materials}
        return leaf.ptype, drawn, set(leaf.patterns or t.patterns)

    for leaf in cat.LEAVES:
        siblings = [s for s in by_parent[leaf.path[:2]] if s is not leaf]
        if leaf.cue == "title":
            assert any(
                looks(s)[0] == leaf.ptype and looks(s)[1:] == looks(leaf)[1:] and not s.hidden
                for s in siblings
            )
        if leaf.cue == "attribute":  # a sibling can be drawn exactly like it
            assert any(looks(s)[0] == leaf.ptype and looks(s)[1] & looks(leaf)[1] for s in siblings), (
                leaf.path
            )

    rng = np.random.default_rng(0)
    index = {leaf.path[-1]: i for i, leaf in enumerate(cat.LEAVES)}
    kids = [cat.sample_product(index["Kids T-Shirts"], rng) for _ in range(300)]
    adults = [cat.sample_product(index["Cotton T-Shirts"], rng) for _ in range(300)]
    kid_values = {"audience: kids", "audience: children", "audience: toddlers"}
    has_kids = [any(a.lower() in kid_values for a in p.attributes) for p in kids + adults]
    assert 0.6 < np.mean(has_kids[:300]) < 1.0 and not any(has_kids[300:])
    gift = [cat.sample_product(index["Mug Gift Sets"], rng) for _ in range(300)]
    plain = [cat.sample_product(index["Ceramic Mugs"], rng) for _ in range(300)]
    says_gift = [("Gift Set" in p.title or "Gift Box" in p.title) for p in gift + plain]
    assert 0.6 < np.mean(says_gift[:300]) < 1.0 and not any(says_gift[300:])
    assert {p.material for p in gift} == {p.material for p in plain} == {"ceramic"}


def test_titles_look_like_shop_titles():
    rng = np.random.default_rng(1)
    products = [cat.sample_product(i % len(cat.LEAVES), rng) for i in range(2000)]
    nouns = [any(n.lower() in p.title.lower() for n in cat.TYPES[p.ptype].nouns) for p in products]
    assert 0.8 < np.mean(nouns) < 0.97, "about 10% of titles omit the product type"
    contradict = [
        any(c in p.title.lower().split() for c in cat._GENERAL if c != p.colour)
        and p.colour not in p.title.lower()
        for p in products
    ]
    assert 0 < np.mean(contradict) < 0.08
    assert any(any(m in p.title for m in cat.MARKETING) for p in products)


def test_cli_and_sample_grid(tmp_path):
    cat.main(["--output_dir", str(tmp_path / "cli"), "--num_products", "40", "--image_size", "32", "--num_proc", "1",
              "--sample_grid", str(tmp_path / "grid.png")])  # fmt: skip
    assert (tmp_path / "cli" / "catalogue.json").is_file()
    assert Image.open(tmp_path / "grid.png").size[0] == 8 * 128


# --- the "hard" layout (issue 13) --------------------------------------------------------------------------

# sha256 of plan_catalogue(300, 0, ...) and every 7th product row (32 px), made by the generator before the
# hard layout existed (commit f6958b0): the demo catalogue must stay byte-identical.
DEMO_ROWS_SHA256 = "c33a7f3a67fdd53f1f03fd8a5ad27741903f9cb5281a028bc7e1bb3ef96f2fba"


def test_demo_layout_is_byte_identical_to_the_generator_before_layouts():
    import hashlib

    leaf_of, split_of, held = cat.plan_catalogue(300, 0, 0.15, 0.1, 0.15)
    assert (leaf_of, split_of, held)[2] == cat.plan_catalogue(300, 0, 0.15, 0.1, 0.15, layout="demo")[2]
    h = hashlib.sha256(json.dumps([leaf_of.tolist(), split_of.tolist(), held]).encode())
    for i in range(0, 300, 7):
        row = cat.product_row(i, int(leaf_of[i]), 0, 32)
        h.update(json.dumps({k: v for k, v in row.items() if k != "image"}).encode())
        h.update(row["image"]["bytes"])
    assert h.hexdigest() == DEMO_ROWS_SHA256


def test_demo_catalogue_json_records_no_layout(small):
    assert "layout" not in json.loads((small / "catalogue.json").read_text())["args"]


def test_unknown_layout_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown layout 'nope'"):
        cat.layout_leaves("nope")


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    out = tmp_path_factory.mktemp("cat") / "hard"
    cat.main(["--output_dir", str(out), "--layout", "hard", "--num_products", "400", "--seed", "0", "--image_size", "32",
              "--num_proc", "1"])  # fmt: skip
    return out


def test_hard_layout_holds_out_whole_types_under_seen_parents(hard):
    info = json.loads((hard / "catalogue.json").read_text())
    assert info["args"]["layout"] == "hard" and info["held_out_types"]
    rows = _rows(hard).values()
    train_paths = [r["category"] for r in rows if r["split"] == "train"]
    seen = seen_nodes(train_paths)
    types = set(info["held_out_types"])
    leaf_type = {leaf.path: leaf.ptype for leaf in cat.HARD_LEAVES}
    for row in rows:
        if leaf_type[tuple(row["category"])] in types:
            assert row["split"] == "test", row["product_id"]
            assert tuple(row["category"][:2]) in seen  # a new type's parent was seen in training
    # each middle group keeps at least two seen types
    for group in {leaf.path[:2] for leaf in cat.HARD_LEAVES}:
        assert len({leaf.ptype for leaf in cat.HARD_LEAVES if leaf.path[:2] == group} - types) >= 2


def test_hard_layout_titles_rarely_name_the_group_and_never_the_category_in_attributes(hard):
    rows = list(_rows(hard).values())
    assert all(len(r["category"]) == 3 for r in rows)
    for r in rows:
        assert not any(r["category"][1].lower() in a.lower() for a in r["attributes"]), r
