"""The notebooks: committed without outputs (fast); executed top to bottom without an error on the
built-in model (slow), showing what their markdown promises.

Both notebooks run in one temporary folder, in order, as a reader would run them: notebook 2
then finds notebook 1's statistics in ``runs/notebooks/`` (it also records them itself when run
alone). The kernel is ``python3``; install it once with
``python -m ipykernel install --user --name python3``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_language_neurons.ipynb", "02_steering.ipynb"]
LANGUAGES = ["en", "fr", "ja", "zh"]  # the notebooks' LANGUAGES


def test_notebooks_are_committed_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", name
        assert "widgets" not in nb.metadata, f"{name}: saved widget state; run scripts/strip_notebooks.py"
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, \
                    f"{name} cell {i} has outputs: run scripts/strip_notebooks.py"
                assert "execution" not in cell.metadata, f"{name} cell {i}: run scripts/strip_notebooks.py"


def test_notebooks_use_the_public_api_only():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        imports = re.findall(r"^\s*(?:from|import)\s+(lape[\w.]*)", code, flags=re.M)
        assert set(imports) <= {"lape", "lape.plots", "lape.evaluate.steering", "lape.evaluate.steer_profile",
                                "lape.evaluate.fluency", "lape.prompts"}, (name, imports)
        assert not re.search(r"\._\w", code), name  # no private helpers


# --------------------------------------------------------------------------------------------
# executed (slow)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The notebooks' working folder, shared so that notebook 2 reuses notebook 1's statistics."""
    return tmp_path_factory.mktemp("notebooks")


def execute(name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run a notebook in ``cwd`` with nbclient; a cell error fails the test with its traceback."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail("no Jupyter kernel 'python3': run python -m ipykernel install --user --name python3")
    # one thread unless told otherwise: on a 2-core machine shared with other jobs, two OpenMP
    # threads ran the model 2-6x slower than one (spinning on each other); CI may set its own
    if "OMP_NUM_THREADS" not in os.environ:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return nb


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def check_strip_script(nb: nbformat.NotebookNode, name: str, tmp_path: Path) -> None:
    """scripts/strip_notebooks.py turns the executed notebook back into the committed cells."""
    path = tmp_path / name
    nbformat.write(nb, path)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "strip_notebooks.py"), str(path)], check=True)
    stripped, committed = nbformat.read(path, as_version=4), nbformat.read(NOTEBOOKS / name, as_version=4)
    assert "widgets" not in stripped.metadata
    assert [dict(c) for c in stripped.cells] == [dict(c) for c in committed.cells]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "strip_notebooks.py"), "--check", str(path)])
    assert out.returncode == 0


@pytest.mark.slow
def test_language_neurons_notebook(workdir, monkeypatch, tmp_path):
    nb = execute(NAMES[0], workdir, monkeypatch)
    text = stdout(tagged(nb, "identify"))
    m = re.search(r"language-specific neurons per language: (\{.*\})", text)
    assert m, text
    counts = ast.literal_eval(m.group(1))  # e.g. {'en': 26, 'fr': 191, 'ja': 159, 'zh': 93}
    assert list(counts) == LANGUAGES and all(isinstance(v, int) and v > 0 for v in counts.values()), counts
    assert images(nb) == 3  # layer distribution, overlaps, probability heatmap
    run = workdir / "runs" / "notebooks"
    assert (run / "stats" / "stats.json").is_file() and (run / "neurons" / "neurons.json").is_file()
    check_strip_script(nb, NAMES[0], tmp_path)


@pytest.mark.slow
def test_steering_notebook(workdir, monkeypatch, tmp_path):
    nb = execute(NAMES[1], workdir, monkeypatch)
    text = stdout(tagged(nb, "intervene"))
    assert re.search(r"\d+ layer edits, \d+ neurons set to 0", text) and "French off:" in text, text
    # one random draw has no spread: its SD prints as nan, which literal_eval does not read
    ppl_rows = [ast.literal_eval(re.sub(r"\bnan\b", "None", line))
                for line in stdout(tagged(nb, "ppl")).splitlines() if line.strip()]
    assert [r["language"] for r in ppl_rows] == LANGUAGES
    steer = stdout(tagged(nb, "steer"))
    assert "unsteered" in steer and "en->fr" in steer and "neurons in" in steer and "of real fr text" in steer, steer
    assert "control random: mean success" in stdout(tagged(nb, "evaluate"))
    profile = stdout(tagged(nb, "profile")).splitlines()
    assert [line.split()[0] for line in profile] == ["fr", "ja", "zh"], profile
    assert images(nb) == 2  # perplexity heatmaps, steering bars
    assert (workdir / "runs" / "notebooks" / "ppl" / "ppl.json").is_file()
    check_strip_script(nb, NAMES[1], tmp_path)
