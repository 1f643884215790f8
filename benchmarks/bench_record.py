"""Recording throughput: lape record vs the bare decoder, vs a naive recorder; memory vs corpus size.

Figures (built-in Gemma 3 270M, same batches of the built-in corpus, interleaved repetitions):
  1. record / bare decoder forward (LM head skipped), tokens/s ratio.  Target >= 0.95.
  2. record / naive recorder (full-logit forward, hooks copying activations to numpy,
     counting afterwards), speed-up.  Expect >= 3x (262k-entry vocabulary).
  5. peak RSS of recording 4x more tokens / peak RSS of the base size, each in a fresh
     process.  Target <= 1.10 (memory stays flat with corpus size).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from common import (
    ROOT,
    Report,
    builtin_batches,
    interleaved,
    parser,
    peak_rss_mb,
    reset_peak_rss,
    sequences,
)

from lape import load_model, record
from lape.neurons.stats import RecordConfig
from lape.space import NeuronSpace


def _memory_child(tokens: int) -> None:
    """Run in a subprocess: record ``tokens`` tokens of English, print peak RSS in MB."""
    from lape.corpora import load_corpus

    model, tok = load_model("builtin")
    corpus = load_corpus("builtin", tok, split="train", tokens_per_language=tokens, seq_len=256, languages=["en"])
    reset_peak_rss(model)  # the recording's peak (model included), not the loading's
    record(model, corpus, RecordConfig(batch_size=8, seq_len=256), progress=False)
    print(peak_rss_mb())


def main() -> None:
    args = parser(__doc__).parse_args()
    rep = Report("record", args.json)
    model, tok = load_model("builtin")
    n_batches, batch, seq_len = (1, 4, 128) if args.quick else (6, 8, 256)
    data = builtin_batches(tok, n_batches, batch=batch, seq_len=seq_len)
    seqs = sequences(data)
    tokens = sum(int(m.sum()) for _, m in data)
    base = model.base_model
    space = NeuronSpace.of(model)

    def bare() -> None:
        with torch.inference_mode():
            for ids, mask in data:
                base(input_ids=ids, attention_mask=mask, use_cache=False)

    def lape_record() -> None:
        record(model, {"en": seqs}, RecordConfig(batch_size=batch, seq_len=seq_len), space=space, progress=False)

    def naive() -> None:
        acts: dict[int, list[np.ndarray]] = {i: [] for i in range(space.num_layers)}
        hooks = [space.act_module(model, i).register_forward_hook(
            lambda m, a, o, i=i: acts[i].append(o.detach().float().numpy().copy())) for i in range(space.num_layers)]
        try:
            with torch.no_grad():
                for ids, mask in data:
                    model(input_ids=ids, attention_mask=mask)
        finally:
            for h in hooks:
                h.remove()
        _ = [sum((a > 0).sum(axis=(0, 1)) for a in acts[i]) for i in acts]

    times = interleaved({"bare": bare, "record": lape_record, "naive": naive}, repeats=1 if args.quick else 3)
    tps = {k: tokens / v for k, v in times.items()}
    for k, v in tps.items():
        rep.figure(f"{k} throughput", v, "tokens/s")
    ratio = tps["record"] / tps["bare"]
    rep.figure("record / bare forward", ratio, "x", target=">= 0.95", ok=ratio >= 0.95, enforce=not args.quick)
    speedup = tps["record"] / tps["naive"]
    rep.figure("record / naive recorder", speedup, "x", target=">= 3", ok=speedup >= 3.0, enforce=not args.quick)

    sizes = (1024, 4096) if args.quick else (16384, 65536)
    peaks = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True,
                             cwd=ROOT, check=True)
        peaks.append(float(out.stdout.strip().splitlines()[-1]))
        rep.figure(f"peak RSS recording {n} tokens", peaks[-1], "MB")
    growth = peaks[1] / peaks[0]
    rep.figure(f"peak RSS growth for {sizes[1] // sizes[0]}x tokens", growth, "x", target="<= 1.10", ok=growth <= 1.10)
    rep.exit()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        _memory_child(int(sys.argv[2]))
    else:
        main()
