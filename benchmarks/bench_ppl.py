"""Perplexity: chunked loss (lape) vs full-logit loss, tokens/s and peak memory.

Figures (built-in model, same batches): tokens/s of each, their ratio, and each one's peak RSS
measured in a fresh process. Target: chunked peak memory below full-logit peak memory, and the
same NLL (|difference| < 1e-4 nats/token).
"""

from __future__ import annotations

import subprocess
import sys

import torch
import torch.nn.functional as F
from common import ROOT, Report, builtin_batches, interleaved, parser, peak_rss_mb, reset_peak_rss

from lape import load_model
from lape.evaluate.perplexity import sequence_nll


def full_logit_nll(model, ids, mask) -> tuple[float, int]:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    loss = F.cross_entropy(logits[valid], ids[:, 1:][valid], reduction="sum")
    return float(loss), int(valid.sum())


def _child(kind: str, batch: int, seq_len: int) -> None:
    model, tok = load_model("builtin")
    data = builtin_batches(tok, 1, batch=batch, seq_len=seq_len)
    reset_peak_rss(model)  # the evaluation's peak (model included), not the loading's
    with torch.inference_mode():
        for ids, mask in data:
            (sequence_nll(model, ids, mask, 128) if kind == "chunked" else full_logit_nll(model, ids, mask))
    print(peak_rss_mb())


def main() -> None:
    args = parser(__doc__).parse_args()
    rep = Report("perplexity", args.json)
    model, tok = load_model("builtin")
    batch, seq_len = (2, 256) if args.quick else (4, 512)
    data = builtin_batches(tok, 1 if args.quick else 2, batch=batch, seq_len=seq_len)
    results: dict[str, tuple[float, int]] = {}

    def run(kind: str):
        def go() -> None:
            tot, n = 0.0, 0
            with torch.inference_mode():
                for ids, mask in data:
                    s, c = sequence_nll(model, ids, mask, 512) if kind == "chunked" else full_logit_nll(model, ids, mask)
                    tot, n = tot + s, n + c
            results[kind] = (tot / n, n)
        return go

    times = interleaved({"chunked": run("chunked"), "full": run("full")}, repeats=2)
    n = results["chunked"][1]
    for k in times:
        rep.figure(f"{k} throughput", n / times[k], "tokens/s")
    rep.figure("chunked / full tokens/s", times["full"] / times["chunked"], "x")
    diff = abs(results["chunked"][0] - results["full"][0])
    rep.figure("|NLL chunked - NLL full|", diff, "nats/token", target="< 1e-4", ok=diff < 1e-4)
    peaks = {}
    for kind in ("chunked", "full"):
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(batch), str(seq_len)],
                             capture_output=True, text=True, cwd=ROOT, check=True)
        peaks[kind] = float(out.stdout.strip().splitlines()[-1])
        rep.figure(f"peak RSS {kind} ({batch}x{seq_len} tokens)", peaks[kind], "MB")
    saving = peaks["full"] - peaks["chunked"]
    rep.figure("peak RSS saved by chunking", saving, "MB", target="> 0", ok=saving > 0)
    rep.exit()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
