"""Built-in model load: first load (assemble + de-quantise the GGUF) vs a cached load.

Each load runs in a fresh process with its own LAPE_CACHE. Target: cached load < 5 s.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from common import ROOT, Report, parser

CHILD = "import time; t=time.perf_counter(); import lape; lape.load_model('builtin'); print(time.perf_counter()-t)"


def timed_load(env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import os

    args = parser(__doc__).parse_args()
    rep = Report("load", args.json)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LAPE_CACHE": cache}
        t0 = time.perf_counter()
        first = timed_load(env)
        rep.figure("first load (de-quantise, in-process)", first, "s")
        rep.figure("first load (process wall time)", time.perf_counter() - t0, "s")
        cached = min(timed_load(env) for _ in range(1 if args.quick else 3))
        rep.figure("cached load (in-process)", cached, "s", target="< 5 s", ok=cached < 5.0, enforce=not args.quick)
        rep.figure("first / cached", first / cached, "x")
    rep.exit()


if __name__ == "__main__":
    main()
