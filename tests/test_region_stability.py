"""Split-half stability of the regions: the exact chance Jaccard against hand-worked values and
brute-force enumeration; identical regions agree fully; two halves of tiny text agree between
chance and 1, as an independent set computation says; cache, save/load and the report section."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from tiny_models import char_tokenizer, tiny_model, tiny_model_folder

from lape.errors import LapeError
from lape.masks import ParamRegions
from lape.regions import ImportanceConfig, RegionConfig
from lape.regions.stability import (
    RegionStability,
    chance_jaccard,
    load_halves,
    region_agreement,
    split_half_stability,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_force_chance(parts: list[tuple[int, int, int]]) -> Fraction:
    """E[J] by enumerating every pair of draws in every tensor (all equally likely)."""
    draws = [list(itertools.product(itertools.combinations(range(n), a), itertools.combinations(range(n), b)))
             for n, a, b in parts]
    total, count = Fraction(0), 0
    for combo in itertools.product(*draws):
        inter = sum(len(set(x) & set(y)) for x, y in combo)
        union = sum(len(set(x) | set(y)) for x, y in combo)
        total += Fraction(inter, union)
        count += 1
    return total / count


def test_chance_jaccard_against_hand_worked_and_enumerated_values():
    # n = 4, k = 2: overlap 0, 1, 2 with P 1/6, 4/6, 1/6 -> J 0, 1/3, 1 -> E[J] = 4/18 + 3/18 = 7/18
    assert chance_jaccard([(4, 2, 2)]) == pytest.approx(7 / 18, rel=1e-12)
    assert 2 / (2 * 4 - 2) == pytest.approx(1 / 3)  # k / (2n - k), the ratio of expectations, is not E[J]
    # two such tensors pooled: S = X1 + X2 with P 1, 8, 18, 8, 1 (/36), J = S / (8 - S) -> 151/420
    assert chance_jaccard([(4, 2, 2), (4, 2, 2)]) == pytest.approx(151 / 420, rel=1e-12)
    for parts in ([(5, 2, 3)], [(4, 1, 2), (3, 2, 1)], [(6, 3, 3), (2, 0, 1)]):
        assert chance_jaccard(parts) == pytest.approx(float(_brute_force_chance(parts)), rel=1e-12), parts
    # large tensors: the ratio of expectations k / (2n - k) is then close
    n = 640 * 2048
    k = n // 100
    assert chance_jaccard([(n, k, k)] * 3) == pytest.approx(k / (2 * n - k), rel=1e-3)
    assert chance_jaccard([(5, 5, 5)]) == 1.0 and chance_jaccard([(5, 0, 3)]) == 0.0
    assert math.isnan(chance_jaccard([(5, 0, 0)]))
    with pytest.raises(LapeError, match="cannot draw 6 and 1 of 5"):
        chance_jaccard([(5, 6, 1)])


def _regions(seed: int) -> ParamRegions:
    g = torch.Generator().manual_seed(seed)
    masks = {"model.layers.0.mlp.down_proj.weight": torch.rand(3, 4, 5, generator=g) < 0.3,
             "model.layers.1.mlp.down_proj.weight": torch.rand(3, 4, 5, generator=g) < 0.3,
             "model.layers.0.input_layernorm.weight": torch.rand(3, 4, generator=g) < 0.5}
    return ParamRegions(["core", "random", "mono:aa"], masks)


TYPES = {"model.layers.0.mlp.down_proj.weight": "mlp.down_proj.weight",
         "model.layers.1.mlp.down_proj.weight": "mlp.down_proj.weight",
         "model.layers.0.input_layernorm.weight": "input_layernorm.weight"}


def test_identical_regions_agree_fully_and_hand_made_ones_as_counted():
    a, b = _regions(0), _regions(1)
    same = region_agreement(a, a, types=TYPES)
    assert [(r["label"], r["type"]) for r in same] == [
        (lab, t) for lab in ("core", "mono:aa") for t in ("all", "mlp.down_proj.weight", "input_layernorm.weight")]
    assert all(r["jaccard"] == 1.0 and r["above_chance"] == pytest.approx(1.0) for r in same)
    rows = {(r["label"], r["type"]): r for r in region_agreement(a, b, labels=["core"], types=TYPES)}
    k = a.labels.index("core")
    down = [n for n in TYPES if "down_proj" in n]
    inter = sum(int((a.masks[n][k] & b.masks[n][k]).sum()) for n in down)
    union = sum(int((a.masks[n][k] | b.masks[n][k]).sum()) for n in down)
    r = rows["core", "mlp.down_proj.weight"]
    assert (r["intersection"], r["union"], r["tensors"], r["numel"]) == (inter, union, 2, 40)
    assert r["jaccard"] == inter / union
    parts = [(20, int(a.masks[n][k].sum()), int(b.masks[n][k].sum())) for n in down]
    assert r["chance"] == pytest.approx(chance_jaccard(parts))
    assert r["above_chance"] == pytest.approx((r["jaccard"] - r["chance"]) / (1 - r["chance"]))
    with pytest.raises(LapeError, match="'bottom' is not in both regions"):
        region_agreement(a, b, labels=["bottom"])
    other = ParamRegions(a.labels, {n: m for n, m in a.masks.items() if "layers.1" not in n})
    with pytest.raises(LapeError, match="different tensors"):
        region_agreement(a, other)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    work = tmp_path_factory.mktemp("stability")
    tiny_model_folder(work, docs=(80, 80))
    model = tiny_model("llama")
    model.requires_grad_(False)
    return model, char_tokenizer(), work / "corpus.yaml"


def _as_set(regions: ParamRegions, label: str, names: list[str]) -> set[tuple[str, int]]:
    k = regions.labels.index(label)
    return {(n, int(i)) for n in names for i in regions.masks[n][k].reshape(-1).nonzero().squeeze(1)}


def test_two_halves_of_tiny_text_agree_between_chance_and_one(tiny_text, tmp_path):
    model, tok, manifest = tiny_text
    halves = load_halves(manifest, tok, tokens_per_language=400, seq_len=32)
    icfg, rcfg = ImportanceConfig(batch_size=4), RegionConfig(top_rate=0.05)
    res = split_half_stability(model, halves, icfg, rcfg, out=tmp_path / "s", progress=False)
    assert not res.from_cache
    one, two = (ParamRegions.load(tmp_path / "s" / f"half-{i}" / "regions") for i in (1, 2))
    assert [r["label"] for r in res.overall()] == ["core", "mono:aa", "mono:bb"]
    for r in res.rows:  # an independent set computation of every row
        names = [n for n in one.masks if r["type"] == "all" or n.split(".", 3)[3] == r["type"]]
        a, b = _as_set(one, r["label"], names), _as_set(two, r["label"], names)
        assert (r["size_a"], r["size_b"], r["intersection"]) == (len(a), len(b), len(a & b))
        assert r["jaccard"] == pytest.approx(len(a & b) / len(a | b))
    core = res.overall()[0]
    assert core["chance"] < core["jaccard"] < 1  # measured: 0.29 against 0.025
    assert core["chance"] == pytest.approx(chance_jaccard(
        [(m[0].numel(), int(m[0].sum()), int(two.masks[n][0].sum())) for n, m in one.masks.items()]))
    assert all(r["chance"] < r["jaccard"] < 1 for r in res.overall())
    assert "core 0." in res.summary_line()
    # the halves' text differs; the same settings again come from the cache, the saved rows load back
    assert one.meta["inputs"] != two.meta["inputs"]
    again = split_half_stability(model, halves, icfg, rcfg, out=tmp_path / "s", progress=False)
    assert again.from_cache and again.rows == res.rows
    back = RegionStability.load(tmp_path / "s", model=model)
    assert back.rows == res.rows
    assert (tmp_path / "s" / "stability.csv").read_text().startswith("label,type,")

    from lape.regions.report import render_stability
    from lape.report import ReportContext

    html = render_stability(tmp_path / "s", ReportContext(tmp_path, tmp_path / "plots"))
    assert "Split-half stability" in html and f"{core['jaccard']:.3f}" in html


def test_bad_halves_give_one_line_errors(tiny_text):
    model, tok, manifest = tiny_text
    first, second = load_halves(manifest, tok, tokens_per_language=100, seq_len=32)
    cases = [((first,), "needs two halves"), ((first, first), "the same text"),
             ((first, {"aa": second["aa"]}), "other languages")]
    for halves, text in cases:
        with pytest.raises(LapeError) as err:
            split_half_stability(model, halves, progress=False)
        assert text in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LapeError, match="sets part= itself"):
        load_halves(manifest, tok, part=(0, 2))
