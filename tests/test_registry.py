"""The one registry of result kinds: every artifact class of the package is listed (with the module
that defines it) in ``lape.artifacts``, so that a fresh interpreter can load any result folder and
``lape report`` recognises it without the defining module imported first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a fresh interpreter imports every module of the package and prints {kind: defining module}
_WALK = """
import importlib, json, pkgutil
import lape, lape.artifacts as a
listed = dict(a._KIND_MODULES)
for m in pkgutil.walk_packages(lape.__path__, "lape."):
    if m.name.startswith("lape.__main__"):
        continue
    importlib.import_module(m.name)
print(json.dumps({"defined": {k: t.__module__ for k, t in a._TYPES.items()}, "listed": listed}))
"""

INTERNAL = {"partial"}  # runningstats' checkpoint of a shard: never a result folder


def fresh(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_every_artifact_kind_is_registered_with_its_module():
    """Catches a new result kind whose module is missing from the loader's table (five were: the
    key-neuron kinds, the method comparison and the neuron cards could not be loaded in a new
    process)."""
    proc = fresh(_WALK)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    defined = {k: m for k, m in out["defined"].items() if k not in INTERNAL}
    assert len(defined) >= 19
    assert out["listed"] == defined


def fresh_kinds(folders: list[Path]) -> list[str]:
    """Each folder's kind and loaded class, in a new interpreter that imported only ``lape``."""
    code = ("import sys, lape\nfrom lape import artifacts\n"
            "for f in sys.argv[1:]:\n"
            "    a = lape.load(f)\n"
            "    print(artifacts.kind_of(f), type(a).__name__)\n")
    proc = fresh(code, *map(str, folders))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


def test_the_method_packages_submodules_are_modules():
    """``import lape.regions.importance as m`` gave the function the package re-exported under the
    submodule's name; no package re-exports a name that is also one of its submodules."""
    import importlib
    import pkgutil
    import types

    import lape

    for info in pkgutil.walk_packages(lape.__path__, "lape."):
        if not info.ispkg:
            continue
        pkg = importlib.import_module(info.name)
        for sub in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{info.name}.{sub.name}")
            assert isinstance(getattr(pkg, sub.name), types.ModuleType), f"{info.name}.{sub.name} is shadowed"


def test_a_stage_has_one_name_folder_kind_and_function(tmp_path):
    """The regions stages' kinds are their folder names with ``_`` (region-dims -> region_dims), the
    library function has the same name, and a folder written under a former kind is refused with
    the command that rewrites it."""
    import pytest

    import lape
    import lape.regions as regions
    from lape.errors import LapeError

    for stage, cls in {"region-dims": regions.dims.RegionDims, "region-perturb": regions.perturb.RegionPerturb,
                       "region-train": regions.forgetting.RegionTrain, "region-bridge": regions.bridge.RegionBridge,
                       "region-ppl": regions.RegionPerplexity, "region-stability": regions.stability.RegionStability}.items():
        assert cls.KIND == stage.replace("-", "_")
    for name in ("region_dims", "region_perturb", "region_train", "region_bridge"):
        assert callable(getattr(regions, name)), name
    old = tmp_path / "region-dims"
    old.mkdir()
    (old / "dims.json").write_text(json.dumps({"format": "lape.dims"}))
    with pytest.raises(LapeError, match=r"'dims' result from an older lape \(the kind is now 'region_dims'\): "
                                        r"re-run lape regions dims"):
        lape.load(old)
