"""Linguistic regions: importance pass vs a plain forward+backward loop; its memory; region ablation.

Figures (built-in Gemma 3 270M, built-in corpus, interleaved repetitions):
  1. tokens/s of ``lape.regions.importance`` / tokens/s of the ordinary Hugging Face loop over the
     same batches (``model(ids, mask, labels=...).loss.backward()``, full vocabulary logits,
     decoder-block parameters requiring grad, gradients accumulated in ``.grad``); 2 batches of
     8 x 256 tokens.  Target >= 0.9.
  2. peak RSS of importance, each in a fresh process, over N and 2N batches (8 and 16 batches of
     1 x 64 tokens): the growth from N to 2N.  Target < 5% of the model's size (flat in corpus
     size).  And the peak above the loaded model against the bound ``decoder-block parameters x
     (gradient dtype bytes + 4 bytes of float32 gradient sum) + one language's float32 scores``
     (computed from the parameter counts and printed).  Target <= 1x.  The batches are small so
     that one batch's activations and vocabulary-logit chunk (which any backward pass needs, and
     which do not grow with the corpus) are small next to the bound; the peak above the model of
     importance on one batch of 8 x 256 tokens is printed beside them (no target: mostly activations
     and the logit chunk).
  3. apply + restore of a 1% region (``edit_weights`` entered and left; 1% random entries of every
     decoder-block tensor), ops ``zero`` and ``remove``, time / one forward pass of the base model
     (no LM head, 8 x 256 tokens).  Target <= 0.1x.  And whether the restore is bit-exact (hash of
     every weight before and after, the edit having changed them): 1 if exact.  Target 1.

``--quick``: 2 batches of 1 x 32 tokens timed once, memory over 2 and 4 batches of 1 x 32; the
speed targets are not enforced.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

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
from lape.regions import ImportanceConfig, param_importance
from lape.regions.importance import gradients_for
from lape.regions.select import random_mask, region_size
from lape.space import ParamSpace
from lape.weights import edit_weights

MB = 1 << 20


def _memory_child(n_batches: int, batch: int, seq_len: int, threads: int) -> None:
    """Run in a subprocess: importance over ``n_batches`` batches of English; print the resident
    memory after loading the model and the peak during the importance pass (MB)."""
    torch.set_num_threads(threads)  # memory does not depend on it; 1 when two children share 2 cores
    model, tok = load_model("builtin")
    data = builtin_batches(tok, n_batches, batch=batch, seq_len=seq_len)
    if len(data) != n_batches:
        raise SystemExit(f"the built-in corpus gave {len(data)} batches of {batch}x{seq_len}, not {n_batches}")
    seqs = sequences(data)
    reset_peak_rss(model)  # the pass's peak (model included), not the loading's
    base = rss_mb()
    param_importance(model, {"en": seqs}, ImportanceConfig(batch_size=batch), out=None, progress=False)
    print(base, peak_rss_mb())


def _run_children(specs: list[tuple[int, int, int]]) -> list[tuple[float, float]]:
    """``(resident after loading, peak)`` of a memory child per ``(batches, batch, seq_len)``, run
    side by side (each measures its own peak), one thread each if there are several."""
    threads = 1 if len(specs) > 1 else torch.get_num_threads()
    procs = [subprocess.Popen([sys.executable, __file__, "--memory-child", *map(str, s), str(threads)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in specs]
    out = []
    for s, p in zip(specs, procs):
        stdout, stderr = p.communicate()
        if p.returncode:
            raise SystemExit(f"memory child {s} exited {p.returncode}:\n{stderr[-3000:]}")
        base, peak = map(float, stdout.strip().splitlines()[-1].split())
        out.append((base, peak))
    return out


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def main() -> None:
    args = parser(__doc__).parse_args()
    quick = args.quick
    rep = Report("regions", args.json)
    model, tok = load_model("builtin")
    space = ParamSpace.of(model)
    names = space.names()
    params = dict(model.named_parameters())

    # 1. importance vs the plain Hugging Face forward+backward loop --------------------------
    n_batches, batch, seq_len = (2, 1, 32) if quick else (2, 8, 256)
    data = builtin_batches(tok, n_batches, batch=batch, seq_len=seq_len)
    seqs = sequences(data)
    tokens = sum(int(m.sum()) for _, m in data)

    def plain() -> None:
        with gradients_for(model, names) as wanted:
            for ids, mask in data:
                labels = ids.masked_fill(mask == 0, -100)
                model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
            for p in wanted.values():
                p.grad = None

    def lape_importance() -> None:
        param_importance(model, {"en": seqs}, ImportanceConfig(batch_size=batch), out=None, progress=False)

    times = interleaved({"plain forward+backward": plain, "importance": lape_importance},
                        repeats=1 if quick else 3)
    for k, v in times.items():
        rep.figure(f"{k} throughput ({n_batches}x{batch}x{seq_len} tokens)", tokens / v, "tokens/s")
    ratio = times["plain forward+backward"] / times["importance"]
    rep.figure("importance / plain forward+backward tokens/s", ratio, "x", target=">= 0.9", ok=ratio >= 0.9,
               enforce=not quick)

    # 3. ablation of a 1% region: apply + restore vs one forward pass -----------------------
    fwd_ids, fwd_mask = data[0] if (batch, seq_len) == (8, 256) else builtin_batches(tok, 1, 8, 256)[0]
    masks = {n: random_mask(params[n].numel(), region_size(0.01, params[n].numel()), 0, n).view(params[n].shape)
             for n in names}
    members = sum(int(m.sum()) for m in masks.values())
    base = model.base_model

    def forward() -> None:
        with torch.inference_mode():
            base(input_ids=fwd_ids, attention_mask=fwd_mask, use_cache=False)

    def apply_restore(op: str):
        def go() -> None:
            with edit_weights(model, masks, op=op):  # type: ignore[arg-type]
                pass
        return go

    before = _weights_hash(model)
    with edit_weights(model, masks):
        changed = _weights_hash(model) != before
    # interleaved: each repetition times one forward pass, then each op three times (they are
    # short, so a busy machine's pauses weigh more on them; the best of each is kept)
    fns = {"forward": forward, "zero": apply_restore("zero"), "remove": apply_restore("remove")}
    times = {k: float("inf") for k in fns}
    for _ in range(1 if quick else 5):
        for k, fn in fns.items():
            for _ in range(1 if k == "forward" or quick else 3):
                t0 = time.perf_counter()
                fn()
                times[k] = min(times[k], time.perf_counter() - t0)
    exact = changed and _weights_hash(model) == before
    rep.figure("forward pass of the base model (8x256 tokens)", times["forward"] * 1000, "ms")
    for op in ("zero", "remove"):
        rep.figure(f"ablation apply+restore ({op}, {members} entries, 1%)", times[op] * 1000, "ms")
        r = times[op] / times["forward"]
        rep.figure(f"ablation apply+restore / forward ({op})", r, "x", target="<= 0.1", ok=r <= 0.1,
                   enforce=not quick)
    rep.figure("restore bit-exact (1 if exact)", float(exact), "", target="1", ok=exact)

    # 2. memory: flat in corpus size, within model + gradients + one float32 buffer ----------
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    n_block = sum(params[n].numel() for n in names)
    grad_bytes = params[names[0]].element_size()
    bound = n_block * (grad_bytes + 4 + 4) / MB
    rep.figure(f"importance memory bound ({n_block} block params x ({grad_bytes} B gradient + 4 B sum) "
               "+ 4 B scores)", bound, "MB")
    n, mem_len = (2, 32) if quick else (8, 64)
    same = (batch, seq_len) == (1, mem_len)  # --quick: the timing batches are the memory batches
    (b1, p1), (b2, p2) = _run_children([(n, 1, mem_len), (2 * n, 1, mem_len)])
    above = max(p1 - b1, p2 - b2)
    rep.figure(f"peak RSS importance {n} batches (1x{mem_len})", p1, "MB")
    rep.figure(f"peak RSS importance {2 * n} batches (1x{mem_len})", p2, "MB")
    growth = 100 * ((p2 - b2) - (p1 - b1)) / model_mb
    rep.figure(f"peak RSS growth {n} -> {2 * n} batches, % of model size ({model_mb:.0f} MB)", growth, "%",
               target="< 5", ok=growth < 5)
    rep.figure("peak RSS above model", above, "MB")
    rep.figure("peak RSS above model / bound", above / bound, "x", target="<= 1", ok=above <= bound)
    (bw, pw), = [(b1, p1)] if same else _run_children([(1, batch, seq_len)])
    rep.figure(f"peak RSS above model, importance on {batch}x{seq_len} batches (activations included)",
               pw - bw, "MB")
    rep.exit()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--memory-child":
        _memory_child(*(int(a) for a in sys.argv[2:]))
    else:
        main()
