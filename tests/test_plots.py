"""Every plot renders to a valid PNG from small hand-made result objects; lines and cells carry
the numbers computed independently here."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lape import plots
from lape.errors import LapeError
from lape.evaluate.perplexity import PerplexityResult
from lape.evaluate.steering_result import SteeringEval
from lape.masks import NeuronSets
from lape.neurons.stats import ActivationStats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LANGS = ["en", "fr", "ja"]
LAYERS, NEURONS = 6, 16


# ---------------------------------------------------------------- hand-made result objects
# (shared with test_report.py)


def make_sets() -> NeuronSets:
    """en: bottom layers; fr: top layers; ja: middle + one neuron shared with en."""
    groups = {
        "en": [(0, 1), (0, 2), (1, 3), (1, 4), (5, 0)],
        "fr": [(4, 5), (5, 6), (5, 7)],
        "ja": [(2, 8), (3, 9), (0, 1)],
    }
    return NeuronSets.from_neurons(groups, (LAYERS, NEURONS), {"method": "lape"})


def make_stats(meta: dict | None = None) -> ActivationStats:
    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor([1000, 800, 1200], dtype=torch.int64)
    fire = (torch.rand(len(LANGS), LAYERS, NEURONS, generator=g) * tokens.view(-1, 1, 1)).to(torch.int64)
    sums = fire.to(torch.float64) * 0.5
    return ActivationStats(list(LANGS), fire, tokens, sums, sums.clone(), dict(meta or {}))


def make_ppl() -> PerplexityResult:
    base = [2.0, 2.5, 3.0]
    nll = [[b + (2.0 if i == j else 0.05) for j, b in enumerate(base)] for i in range(3)]
    rnd = [[b + 0.01 for b in base] for _ in range(3)]
    meta = {"format": "lape.ppl", "format_version": 1, "neurons": {"method": "lape"},
            "config": {"split": "valid", "tokens_per_language": 256}, "random_seed": 0}
    return PerplexityResult(list(LANGS), list(LANGS), base, nll, rnd, {lang: 256 for lang in LANGS}, meta)


def make_steering(strengths: tuple[float, ...] = (1.0,), text: str = "Bonjour le monde") -> SteeringEval:
    rows, examples = [], []
    for k, target in enumerate(["fr", "ja"]):
        for s in strengths:
            rows.append({"target": target, "strength": s, "prompts": 4,
                         "steered_success": min(1.0, 0.25 * (k + 1) * s), "unsteered_success": 0.0,
                         "steered_target_language": 0.5, "steered_distinct_2": 0.9 - 0.1 * s,
                         "unsteered_distinct_2": 0.95, "steered_repetition": 0.1,
                         "steered_degenerate": 0.0, "identified": {target: 2, "en": 2}})
            examples.append({"target": target, "strength": s, "prompt": "The weather today is",
                             "unsteered": "sunny and warm.", "unsteered_language": "en",
                             "steered": text, "steered_language": target, "success": True})
    meta = {"format": "lape.steering", "format_version": 1, "config": {"strength": 1.0, "max_new_tokens": 8},
            "source": "en", "targets": ["fr", "ja"], "strengths": list(strengths), "prompts": 4}
    return SteeringEval(rows, examples, meta)


# ---------------------------------------------------------------- helpers


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    return buf.getvalue()


def assert_png(data: bytes) -> np.ndarray:
    import matplotlib.image

    assert data[:8] == PNG_MAGIC
    img = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0
    assert float(img[..., :3].var()) > 0  # not blank
    return img


def cell_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


# ---------------------------------------------------------------- tests


def test_layer_distribution_lines_are_counts_per_layer():
    sets = make_sets()
    fig = plots.layer_distribution(sets, shares=(0.5, 0.25))
    assert_png(png_bytes(fig))
    ax = fig.axes[0]
    assert len(ax.lines) == len(sets.labels)
    for k, label in enumerate(sets.labels):
        expected = [sum(1 for layer, _ in sets.neurons(label) if layer == i) for i in range(LAYERS)]
        np.testing.assert_array_equal(ax.lines[k].get_ydata(), expected)
        np.testing.assert_array_equal(ax.lines[k].get_xdata(), range(LAYERS))
        assert ax.lines[k].get_label() == label
    assert "bottom third 50%" in ax.get_title() and "top third 25%" in ax.get_title()
    assert "LAPE" in ax.get_title()


def test_overlap_heatmap_annotates_overlaps():
    sets = make_sets()
    fig = plots.overlap_heatmap(sets)
    assert_png(png_bytes(fig))
    ax = fig.axes[0]
    # en and ja share (0, 1); diagonal: set sizes
    expected = [[5, 0, 1], [0, 3, 0], [1, 0, 3]]
    np.testing.assert_array_equal(ax.images[0].get_array(), expected)
    assert cell_texts(ax) == [str(v) for row in expected for v in row]


def test_select_neurons_groups_by_first_label_and_subsamples():
    sets = make_sets()
    cols = plots.select_neurons(sets)
    # (0, 1) is in en and ja: shown once, under en
    assert [c for c in cols if c[1:] == (0, 1)] == [("en", 0, 1)]
    assert len(cols) == int(sets.union().sum()) == 10
    assert [c[0] for c in cols] == ["en"] * 5 + ["fr"] * 3 + ["ja"] * 2
    few = plots.select_neurons(sets, max_neurons=4)
    assert len(few) == 4 and few[0] == cols[0] and few[-1] == cols[-1]
    with pytest.raises(LapeError, match="^max_neurons must be at least 1, got 0$"):
        plots.select_neurons(sets, max_neurons=0)


def test_probability_heatmap_shows_probabilities_of_selected_neurons():
    sets, stats = make_sets(), make_stats()
    fig = plots.probability_heatmap(sets, stats)
    assert_png(png_bytes(fig))
    data = np.asarray(fig.axes[0].images[0].get_array())
    cols = plots.select_neurons(sets)
    assert data.shape == (len(LANGS), len(cols))
    for j, (_, layer, idx) in enumerate(cols):
        for i in range(len(LANGS)):
            assert data[i, j] == pytest.approx(int(stats.fire_counts[i, layer, idx]) / int(stats.token_counts[i]))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["en", "fr", "ja"]
    small = plots.probability_heatmap(sets, stats, max_neurons=3)
    assert np.asarray(small.axes[0].images[0].get_array()).shape == (3, 3)


def test_probability_heatmap_refuses_other_neuron_space():
    other = NeuronSets.from_neurons({"en": [(0, 0)]}, (LAYERS + 1, NEURONS))
    with pytest.raises(LapeError, match="stats"):
        plots.probability_heatmap(other, make_stats())


@pytest.mark.parametrize("metric", ["delta_ppl", "delta_nll", "nll"])
def test_ppl_heatmaps_draw_each_metric_for_the_sets_and_their_random_baseline(metric):
    result = make_ppl()
    fig = plots.ppl_heatmaps(result, metric=metric)
    assert_png(png_bytes(fig))
    for ax, random in zip(fig.axes[:2], (False, True)):
        expected = {"delta_ppl": result.delta_ppl(random), "delta_nll": result.delta_nll(random),
                    "nll": result.random_nll if random else result.nll}[metric]
        np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan), expected)
        assert ("random" in ax.get_title()) == random
        assert ("LAPE" in ax.get_title()) != random
        assert len(ax.texts) == 9


def test_ppl_heatmaps_reject_an_unknown_metric():
    with pytest.raises(LapeError, match="metric"):
        plots.ppl_heatmaps(make_ppl(), metric="accuracy")


def test_ppl_heatmaps_share_one_colour_scale():
    result = make_ppl()
    fig = plots.ppl_heatmaps(result)
    assert_png(png_bytes(fig))
    left, right = fig.axes[0].images[0], fig.axes[1].images[0]
    assert left.norm is right.norm
    assert left.norm.vmax >= max(max(r) for r in result.delta_ppl())
    np.testing.assert_allclose(right.get_array(), result.delta_ppl(random=True))


def test_ppl_heatmap_without_random_baseline_draws_blank_cells():
    result = make_ppl()
    result.random_nll = [[float("nan")] * 3 for _ in range(3)]
    fig = plots.ppl_heatmaps(result)
    assert_png(png_bytes(fig))
    assert set(cell_texts(fig.axes[1])) == {"–"}


def test_steering_bars_use_the_configured_strength():
    ev = make_steering(strengths=(0.5, 1.0, 2.0))
    assert plots.default_strength(ev) == 1.0
    fig = plots.steering_bars(ev)
    assert_png(png_bytes(fig))
    ax = fig.axes[0]
    unsteered, steered = ax.containers
    assert [b.get_height() for b in steered] == pytest.approx([25.0, 50.0])
    assert [b.get_height() for b in unsteered] == pytest.approx([0.0, 0.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fr", "ja"]


def test_steering_bars_fall_back_to_the_first_strength():
    ev = make_steering(strengths=(2.0, 4.0))
    assert plots.default_strength(ev) == 2.0
    steered = plots.steering_bars(ev).axes[0].containers[1]
    assert [b.get_height() for b in steered] == pytest.approx([50.0, 100.0])


def test_strength_sweep_lines_per_target():
    ev = make_steering(strengths=(2.0, 0.5, 1.0))
    fig = plots.strength_sweep(ev)
    assert_png(png_bytes(fig))
    success, distinct = fig.axes[0], fig.axes[1]
    assert [line.get_label() for line in success.lines] == ["fr", "ja"]
    np.testing.assert_allclose(success.lines[0].get_xdata(), [0.5, 1.0, 2.0])
    np.testing.assert_allclose(success.lines[1].get_ydata(), [25.0, 50.0, 100.0])
    np.testing.assert_allclose(distinct.lines[0].get_ydata(), [0.85, 0.8, 0.7])


def test_thirds():
    assert plots.thirds(18) == (range(0, 6), range(12, 18))
    assert plots.thirds(26) == (range(0, 8), range(18, 26))
    assert plots.thirds(2) == (range(0, 1), range(1, 2))


def test_plots_leave_no_pyplot_state():
    import sys

    plots.layer_distribution(make_sets())
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_empty_sets_still_plot():
    empty = NeuronSets(list(LANGS), torch.zeros(len(LANGS), LAYERS, NEURONS, dtype=torch.bool), {})
    for fig in (plots.layer_distribution(empty), plots.overlap_heatmap(empty),
                plots.probability_heatmap(empty, make_stats())):
        assert png_bytes(fig)[:8] == PNG_MAGIC
