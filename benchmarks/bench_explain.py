"""Neuron cards (``lape explain``): the pass's speed against a bare forward, and memory vs corpus size.

Figures (built-in Gemma 3 270M, 700 neurons spread over every layer as LAPE sets are, the same
batches of the built-in corpus, interleaved repetitions):
  1. explain pass (running top-k contexts + firing sums) / bare decoder forward (LM head
     skipped), tokens/s ratio.  Target >= 0.9.
  2. seconds to read the neurons' output directions through the unembedding (logit lens), once.
  3. peak RSS growth (above the loaded model) of the pass over 4x more tokens / over the base
     size, each in a fresh process.  Target <= 1.10 (memory is O(neurons x k x window), flat in
     corpus size).
``--quick``: 200 neurons, 1 batch of 2 x 128 tokens (memory: 1 vs 4 batches).
"""

from __future__ import annotations

import subprocess
import sys

import torch
from common import (
    ROOT,
    Report,
    builtin_batches,
    interleaved,
    parser,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    sequences,
)

from lape import load_model
from lape.explain import ExplainConfig, explain
from lape.explain.lens import written_tokens
from lape.space import NeuronSpace


def _neurons(space: NeuronSpace, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(space.num_layers * space.neurons_per_layer, generator=g)[:n].sort().values
    return torch.stack([flat // space.neurons_per_layer, flat % space.neurons_per_layer], dim=1)


def _sizes(quick: bool) -> tuple[int, int, int, int]:
    """``(neurons, batches timed, batch, seq_len)``."""
    return (200, 1, 2, 128) if quick else (700, 4, 8, 256)


def _memory_child(quick: bool, scale: int) -> None:
    """Run in a fresh process: explain ``scale`` x the base number of batches, print the peak RSS
    growth above the loaded model (MB)."""
    model, tok = load_model("builtin")
    space = NeuronSpace.of(model)
    n_neurons, n_batches, batch, seq_len = _sizes(quick)
    data = builtin_batches(tok, n_batches * scale, batch=batch, seq_len=seq_len)
    seqs = sequences(data)
    reset_peak_rss(model)
    before = rss_mb()
    explain(model, {"en": seqs}, _neurons(space, n_neurons), ExplainConfig(batch_size=batch, seq_len=seq_len),
            space=space, progress=False)
    print(peak_rss_mb() - before)


def main() -> None:
    args = parser(__doc__).parse_args()
    rep = Report("explain", args.json)
    model, tok = load_model("builtin")
    space = NeuronSpace.of(model)
    quick = args.quick
    n_neurons, n_batches, batch, seq_len = _sizes(quick)
    neurons = _neurons(space, n_neurons)
    data = builtin_batches(tok, n_batches, batch=batch, seq_len=seq_len)
    seqs = sequences(data)
    config = ExplainConfig(batch_size=batch, seq_len=seq_len)
    print(f"explain: {n_neurons} neurons, {n_batches} batch(es) of {batch} x {seq_len}; "
          f"{torch.get_num_threads()} threads", flush=True)

    # 1. speed against a bare forward over the same batches -----------------------------------
    timed = data
    tokens = sum(int(m[:, 1:].sum()) for _, m in timed)
    base = model.base_model

    def bare() -> None:
        with torch.inference_mode():
            for ids, mask in timed:
                base(input_ids=ids, attention_mask=mask, use_cache=False)

    def cards() -> None:
        explain(model, {"en": seqs}, neurons, config, space=space, progress=False)

    def lens_only() -> None:
        written_tokens(model, space, neurons)

    times = interleaved({"bare": bare, "explain": cards, "lens": lens_only}, repeats=1 if quick else 3)
    lens = times["lens"]
    # the explain pass includes the lens once: the ratio compares the context pass alone
    tps = {"bare": tokens / times["bare"], "explain": tokens / max(times["explain"] - lens, 1e-9)}
    for k, v in tps.items():
        rep.figure(f"{k} throughput", v, "tokens/s")
    ratio = tps["explain"] / tps["bare"]
    rep.figure("explain pass / bare forward", ratio, "x", target=">= 0.9", ok=ratio >= 0.9, enforce=not quick)
    rep.figure(f"logit lens of {n_neurons} neurons", lens, "s")
    growth = {}
    for scale in (1, 4):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(scale), *(["--quick"] if quick else [])],
                             capture_output=True, text=True, cwd=ROOT, check=True)
        growth[scale] = float(out.stdout.strip().splitlines()[-1])
        rep.figure(f"peak RSS growth, {scale * len(seqs)} sequences (fresh process)", growth[scale], "MB")
    flat = growth[4] / max(growth[1], 1.0)
    rep.figure("peak RSS growth 4x tokens / 1x", flat, "x", target="<= 1.1", ok=flat <= 1.1, enforce=not quick)
    rep.exit()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--memory-child":
        _memory_child("--quick" in sys.argv, int(sys.argv[2]))
    else:
        main()
