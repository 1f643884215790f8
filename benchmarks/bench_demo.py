"""`lape demo` stage times: record, identify, perplexity, steering, report.

Full mode runs the demo with its default settings into a fresh folder and checks the target:
the whole demo finishes in under 10 minutes on a 2-core CPU machine. ``--quick`` runs a tiny
configuration (CI) and only prints the times.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import Report, parser

from lape.pipeline import DemoConfig, run_demo


def main() -> None:
    args = parser(__doc__).parse_args()
    rep = Report("demo", args.json)
    config = DemoConfig()
    if args.quick:
        config = DemoConfig(languages=("en", "fr"), tokens_per_language=512, ppl_tokens_per_language=64,
                            steer_prompts=2, seq_len=128)
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_demo(config, out=Path(tmp) / "demo", progress=False)
        for stage, seconds in summary["seconds"].items():
            rep.figure(f"stage {stage}", seconds, "s")
        total = summary["total_seconds"]
        rep.figure("total (with model load and report)", total, "s", target="< 600 s", ok=total < 600,
                   enforce=not args.quick)
        second = run_demo(config, out=Path(tmp) / "demo", progress=False)
        rep.figure("second run (everything cached)", second["total_seconds"], "s", target="no stage re-run",
                   ok=not second["ran"])
    rep.exit()


if __name__ == "__main__":
    main()
