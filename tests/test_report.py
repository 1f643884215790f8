"""The HTML report of a hand-made run folder: sections, embedded images, escaping, no network
references; figure files; a headless-Chromium screenshot when Chromium is installed."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from test_plots import (
    LANGS,
    LAYERS,
    NEURONS,
    PNG_MAGIC,
    assert_png,
    make_ppl,
    make_sets,
    make_stats,
    make_steering,
)

from lape import artifacts, plots, report
from lape.errors import LapeError
from lape.masks import NeuronSets
from lape.neurons.report import SECTIONS as lape_sections

EVIL = "<script>alert('x')</script> & \"quoted\""
FINGERPRINT = {"architecture": "TinyForCausalLM", "num_layers": LAYERS, "hidden_size": 32,
               "intermediate_size": NEURONS, "vocab_size": 100, "num_parameters": 12345,
               "checksum": "0123456789abcdef"}


def make_run(root: Path, parts: tuple[str, ...] = ("stats", "neurons", "ppl", "steering"),
             strengths: tuple[float, ...] = (0.5, 1.0, 2.0)) -> Path:
    run = root / "run"
    run.mkdir()
    meta = artifacts.sidecar("stats", model_id="tiny/model", model_fingerprint=FINGERPRINT,
                             num_layers=LAYERS, neurons_per_layer=NEURONS, languages=LANGS,
                             token_counts={"en": 1000, "fr": 800, "ja": 1200},
                             config={"tokens_per_language": 1000, "seq_len": 64, "seed": 0},
                             seconds=2.5, tokens_per_second=1200.0, world_size=1)
    if "stats" in parts:
        make_stats(meta).save(run / "stats")
    if "neurons" in parts:
        sets = make_sets()
        sets.meta.update(model_id="tiny/model", fingerprint=FINGERPRINT, config={"method": "lape", "top_rate": 0.01})
        sets.save(run / "neurons")
    if "ppl" in parts:
        make_ppl().save(run / "ppl")
    if "steering" in parts:
        make_steering(strengths, text=EVIL).save(run / "steering")
    artifacts.write_json(run / "demo.json", {"model": "builtin", "languages": LANGS, "seed": 0,
                                             "note": "<b>settings</b>"})
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, str]:
    run = make_run(tmp_path_factory.mktemp("report"))
    path = report.write_report(run)
    return run, path.read_text(encoding="utf-8")


def test_report_has_every_section(full_run):
    run, page = full_run
    assert (run / "report.html").is_file()
    for key, title in [("stats", "Activation statistics"), ("neurons", "LAPE neurons"),
                       ("ppl", "Perplexity under deactivation"), ("steering", "Steering the output language")]:
        assert f'<section id="{key}"><h2>{title}' in page
    assert "Run settings" in page and "Model" in page
    assert "tiny/model" in page and "0123456789abcdef" in page and "TinyForCausalLM" in page
    assert "1,200" in page  # tokens/s from the stats sidecar


def test_report_images_are_embedded_pngs(full_run):
    _, page = full_run
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    # layer distribution, overlap, probability, ppl pair, steering bars, strength sweep
    assert len(srcs) == 6
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert_png(base64.b64decode(src.split(",", 1)[1]))


def test_report_references_nothing_outside(full_run):
    _, page = full_run
    for attr in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page, flags=re.I):
        assert not attr.lower().startswith(("http://", "https://", "//")), attr
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page


def test_report_escapes_model_text(full_run):
    _, page = full_run
    assert EVIL not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert "<b>settings</b>" not in page and "&lt;b&gt;settings&lt;/b&gt;" in page


def test_report_tables_hold_the_numbers(full_run):
    _, page = full_run
    sets = make_sets()
    summary = report.neuron_summary(sets)
    assert [r["set"] for r in summary] == ["en", "fr", "ja", "all (union)"]
    assert [r["neurons"] for r in summary] == [5, 3, 3, 10]
    # en: 4 of 5 in layers 0-1 (bottom third of 6 layers), 1 in layer 5 (top third)
    assert summary[0]["bottom_third"] == pytest.approx(0.8) and summary[0]["top_third"] == pytest.approx(0.2)
    assert summary[1]["bottom_third"] == 0 and summary[1]["top_third"] == pytest.approx(1.0)
    assert "80%" in page and "Neurons per layer" in page and "Shared neurons" in page
    result = make_ppl()
    assert f"{result.delta_ppl()[0][0]:,.4g}" in page  # delta-PPL diagonal
    assert "Diagonal" in page and "Unmodified model" in page
    assert "Example outputs" in page and "sunny and warm." in page


def test_report_saves_figures_as_png_and_svg(full_run):
    run, _ = full_run
    names = {p.name for p in (run / "plots").iterdir()}
    for stem in ("layer_distribution", "overlap_heatmap", "probability_heatmap", "ppl_heatmaps",
                 "steering_bars", "strength_sweep"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
        assert (run / "plots" / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
        assert b"<svg" in (run / "plots" / f"{stem}.svg").read_bytes()[:2000]
    assert not [n for n in names if n.endswith(".tmp")]


def test_missing_folders_give_no_section(tmp_path):
    run = make_run(tmp_path, parts=("neurons", "steering"), strengths=(1.0,))
    page = report.write_report(run).read_text(encoding="utf-8")
    assert '<section id="neurons">' in page and '<section id="steering">' in page
    assert '<section id="stats">' not in page and '<section id="ppl">' not in page
    assert "strength_sweep" not in {p.stem for p in (run / "plots").iterdir()}  # one strength
    assert "probability_heatmap" not in {p.stem for p in (run / "plots").iterdir()}  # no stats
    assert "tiny/model" in page  # model named by the neurons sidecar


def test_unreadable_folder_gives_a_note(tmp_path):
    run = make_run(tmp_path, parts=("neurons",))
    (run / "ppl").mkdir()  # interrupted: no ppl.json
    page = report.write_report(run).read_text(encoding="utf-8")
    assert '<section id="ppl">' not in page and "ppl/ (no lape artifact)" in page
    make_ppl().save(run / "ppl")
    (run / "ppl" / "ppl.json").write_text((run / "ppl" / "ppl.json").read_text().replace('"nll"', '"nl"'))
    page = report.write_report(run).read_text(encoding="utf-8")
    assert '<section id="ppl">' in page and "could not be read" in page


def test_artifacts_are_found_by_their_sidecar_not_their_folder_name(tmp_path):
    """The README tour writes steering into runs/x/steer: the report must still show it."""
    run = make_run(tmp_path, parts=("neurons",))
    make_steering((1.0,), text="Bonjour").save(run / "steer")
    make_sets().save(run / "neurons-agnostic")
    page = report.write_report(run).read_text(encoding="utf-8")
    assert '<section id="steer"><h2>Steering the output language' in page
    assert '<section id="neurons"><h2>' in page and "neurons-agnostic/ (another neurons artifact; shown: neurons/)" in page


def test_every_steering_evaluation_gets_its_section(tmp_path):
    """Development and test evaluations sit side by side; each has its own figure file."""
    from lape.evaluate.fluency import FluencyReference

    run = make_run(tmp_path, parts=("neurons",))
    make_steering((1.0,), text="Bonjour").save(run / "steering")
    test = make_steering((1.0,), text="Bonsoir")
    test.meta["prompt_set"] = "builtin:test"
    test.save(run / "steer-test")
    FluencyReference({"fr": {"median_nll": 2.0, "p90_nll": 2.5, "windows": 16}}).save(run / "fluency-reference")
    page = report.write_report(run).read_text(encoding="utf-8")
    assert '<section id="steering"><h2>Steering the output language <span' in page
    assert '<section id="steer-test"><h2>Steering the output language (builtin:test)' in page
    assert "Bonjour" in page and "Bonsoir" in page and "another steering artifact" not in page
    assert (run / "plots" / "steering_bars.png").is_file() and (run / "plots" / "steer-test-steering_bars.png").is_file()
    assert '<section id="fluency-reference"><h2>Fluency reference' in page and "12.18" in page  # exp(2.5)


def test_registry_is_extensible(tmp_path):
    from lape.masks import ParamRegions

    run = make_run(tmp_path, parts=("neurons",))
    ParamRegions(["core"], {"w": torch.zeros(1, 2, 3, dtype=torch.bool)}).save(run / "regions")
    seen = []

    def render_regions(folder, ctx):
        seen.append(folder)
        return '<section id="regions"><h2>Regions</h2></section>'

    page = report.write_report(run, [*lape_sections, ("regions", render_regions),
                                     ("keyneurons", render_regions)]).read_text(encoding="utf-8")
    assert seen == [run / "regions"]
    assert '<section id="regions">' in page and 'href="#regions"' in page


def test_empty_run_and_missing_run(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no results yet" in report.write_report(tmp_path / "empty").read_text(encoding="utf-8")
    with pytest.raises(LapeError, match="does not exist"):
        report.write_report(tmp_path / "nope")
    (tmp_path / "file.html").write_text("x")
    with pytest.raises(LapeError, match="is a file: pass the run folder"):
        report.write_report(tmp_path / "file.html")


def test_save_figure_writes_png_and_svg(tmp_path):
    paths = report.save_figure(plots.overlap_heatmap(make_sets()), tmp_path / "sub" / "overlap")
    assert [p.name for p in paths] == ["overlap.png", "overlap.svg"]
    assert_png(paths[0].read_bytes())
    assert paths[1].read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_save_neuron_plots_finds_sibling_stats(tmp_path):
    run = make_run(tmp_path, parts=("stats", "neurons"))
    paths = report.save_neuron_plots(run / "neurons")
    assert {p.name for p in paths} == {f"{s}.{e}" for s in ("layer_distribution", "overlap_heatmap",
                                                              "probability_heatmap") for e in ("png", "svg")}
    assert all(p.parent == run / "plots" for p in paths)
    alone = tmp_path / "alone"
    NeuronSets.load(run / "neurons").save(alone / "neurons")
    paths = report.save_neuron_plots(alone / "neurons", out=alone / "figs")
    assert len(paths) == 4 and all(p.parent == alone / "figs" for p in paths)


def test_layer_shares():
    assert report.layer_shares([4, 0, 0, 0, 0, 2]) == pytest.approx((2 / 3, 1 / 3))
    assert report.layer_shares([0, 0, 0]) == (None, None)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


_SIZES = """<script>window.addEventListener("load", () => {
  const imgs = [...document.querySelectorAll("figure img")];
  document.body.setAttribute("data-rendered",
    imgs.map(i => `${i.naturalWidth}x${i.naturalHeight}:${i.getBoundingClientRect().width}`).join(" "));
});</script>"""


def test_report_screenshot(full_run, tmp_path):
    """In headless Chromium every figure decodes and is laid out with a non-zero size, and the page
    is not blank (a broken data URI, a missing image or a collapsed layout fails)."""
    import matplotlib.image

    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    run, page = full_run
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000"]
    probe = tmp_path / "probe.html"  # the report plus a script that records each figure's rendered size
    probe.write_text(page.replace("</body>", _SIZES + "</body>"), encoding="utf-8")
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", f"file://{probe}"], timeout=90,
                         capture_output=True, text=True, check=False).stdout
    found = re.search(r'data-rendered="([^"]*)"', dom)
    assert found, "chromium did not run the page"
    sizes = [re.fullmatch(r"(\d+)x(\d+):([\d.]+)", x) for x in found.group(1).split()]
    assert len(sizes) == page.count("<figure><img") >= 5
    assert all(m and int(m.group(1)) > 100 and int(m.group(2)) > 100 and float(m.group(3)) > 100 for m in sizes), sizes
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", f"file://{(run / 'report.html').resolve()}"], timeout=60,
                   capture_output=True, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC
    img = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert img.shape[0] > 0 and img.shape[1] > 0
    assert float(img[..., :3].var()) > 0


def test_demo_settings_table(full_run):
    run, page = full_run
    settings = json.loads((run / "demo.json").read_text(encoding="utf-8"))
    for key in settings:
        assert f">{key}<" in page


def test_report_of_empty_neuron_sets(tmp_path):
    run = make_run(tmp_path, parts=("stats",))
    NeuronSets(list(LANGS), torch.zeros(len(LANGS), LAYERS, NEURONS, dtype=torch.bool), {"method": "lape"}).save(
        run / "neurons")
    page = report.write_report(run).read_text(encoding="utf-8")
    assert '<section id="neurons">' in page and "could not be read" not in page
    assert report.neuron_summary(NeuronSets.load(run / "neurons"))[-1]["bottom_third"] is None


def test_markdown_and_html_tables_show_the_same_cell_text():
    """The README's tables (Markdown) and the report's (HTML) format a value the same way; a pipe
    in a model's output cannot break a Markdown row."""
    from lape.report.html import html_table
    from lape.report.markdown import markdown_records, markdown_table

    values = [1234567, 0.1234567, None, float("nan"), True, "a|b", ["x", "y"]]
    md = markdown_table(["v"] * len(values), [values]).splitlines()[2]
    assert md == "| 1,234,567 | 0.1235 | – | – | yes | a\\|b | x, y |"
    html = html_table(["v"] * len(values), [values])
    for text in ("1,234,567", "0.1235", "yes", "a|b", "x, y"):
        assert f">{text}</td>" in html
    assert markdown_records([{"set": "fr", "n": 1000}]) == "| set | n |\n|---|---|\n| fr | 1,000 |"
    assert markdown_records([]) == ""
