"""Built-in model load: first load (assemble + de-quantise the GGUF) vs a cached load.

Each load runs in a fresh process with its own LAPE_CACHE. Target: cached load < 5 s, timed as
``load_model("builtin")`` in a process that has imported torch and transformers' model classes
(reading the cache, building the model and its tokenizer). The cold process's imports are
reported beside it: on 2 CPU cores importing torch and transformers' Gemma 3 code alone takes
about 5 s, which no loader can save.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from common import ROOT, Report, parser

CHILD = """import time
t0 = time.perf_counter()
import lape, transformers.models.gemma3.modeling_gemma3, transformers.modeling_utils
t1 = time.perf_counter()
lape.load_model('builtin')
print(t1 - t0, time.perf_counter() - t1)"""


def timed_load(env: dict) -> tuple[float, float]:
    """(seconds importing lape, torch and transformers' Gemma 3 code, seconds in load_model)."""
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    imports, load = out.stdout.strip().splitlines()[-1].split()
    return float(imports), float(load)


def main() -> None:
    import os

    args = parser(__doc__).parse_args()
    rep = Report("load", args.json)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LAPE_CACHE": cache}
        t0 = time.perf_counter()
        _, first = timed_load(env)
        rep.figure("first load (de-quantise, load_model)", first, "s")
        rep.figure("first load (process wall time)", time.perf_counter() - t0, "s")
        imports, cached = min((timed_load(env) for _ in range(1 if args.quick else 3)), key=lambda t: t[1])
        rep.figure("imports of torch + transformers (cold process)", imports, "s")
        rep.figure("cached load (load_model)", cached, "s", target="< 5 s", ok=cached < 5.0, enforce=not args.quick)
        rep.figure("cold process: imports + cached load", imports + cached, "s")
        rep.figure("first / cached", first / cached, "x")
    rep.exit()


if __name__ == "__main__":
    main()
