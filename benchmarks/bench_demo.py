"""`lape demo` stage times: record, identify, perplexity, steering, the linguistic-regions stages
(importance, regions, dimensions, removal, perturbation, bridge), report.

Full mode runs the demo with its default settings into a fresh folder and checks the target:
the whole demo finishes in under 10 minutes on a 2-core CPU machine. ``--quick`` runs a tiny
configuration (CI: LAPE's stages only; the others are tested on their own) and only prints the times. ``--out DIR`` keeps the run (the README's demo
section is generated from it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import Report, parser

from lape.pipeline import DemoConfig, run_demo


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", default=None, help="run folder to keep (default: a temporary one, removed)")
    args = p.parse_args()
    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()):
        p.error(f"--out {args.out} is not empty: give a new folder (a finished run would be skipped, not timed)")
    rep = Report("demo", args.json)
    config = DemoConfig()
    if args.quick:
        config = DemoConfig(languages=("en", "fr"), tokens_per_language=512, ppl_tokens_per_language=64,
                            steer_prompts=2, seq_len=128, regions_languages=("en", "fr"),
                            regions_tokens_per_language=128, regions_eval_tokens=64, regions=False,
                            keyneurons=False, explain=False)  # those stages: tests/test_pipeline.py and their own
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.out) if args.out else Path(tmp) / "demo"
        summary = run_demo(config, out=run, progress=False)
        for stage, seconds in summary["seconds"].items():
            rep.figure(f"stage {stage}", seconds, "s")
        total = summary["total_seconds"]
        rep.figure("total (with model load and report)", total, "s", target="< 600 s", ok=total < 600,
                   enforce=not args.quick)
        second = run_demo(config, out=run, progress=False)
        rep.figure("second run (everything cached)", second["total_seconds"], "s", target="no stage re-run",
                   ok=not second["ran"])
    rep.exit()


if __name__ == "__main__":
    main()
