"""Key-neuron attribution: lape's batched integrated gradients vs the released code's way.

Both ways compute the same integrated gradients (``lape.keyneurons.ig``: zero baseline, right
Riemann sum, ``alpha_k = k / m``) of the probability of a fixed answer-letter token at the last
position of real multiple-choice prompts (``builtin:domains``, first template of each question),
on the built-in model (float32), attributing the same layers:

* **lape's way**: :func:`lape.keyneurons.ig.attribute_prompt` (``batch_size`` 96, as the
  pipeline runs it, with its zero-baseline rows for the completeness delta): the prefix runs once
  with a KV cache, every (layer, step) is one row of a batch of one-token continuations, and
  vocabulary logits exist for the answer position only.
* **the released code's way** (tigerchen52/qrneuron, adapted from EleutherAI knowledge-neurons),
  :func:`released_attribution` below: for each layer separately, one baseline forward pass to
  read the layer's activations, then for each batch of ``b = 8`` steps (``b`` divides ``m``, as
  the released code asserts) the full prompt repeated ``b`` times through the full model
  (``model(input_ids=...).logits``: logits at every position), a forward hook replacing the
  layer's last-position activations by ``alpha x baseline``, the softmax probability of the
  target at the last position, and ``torch.autograd.grad`` of their sum with respect to the
  scaled activations; attribution ``= baseline x gradient sum / m``.

To keep the run short both ways attribute a **subset of the layers** (default 0, 8 and 17 of the
18, spanning the cheapest and the dearest layer for the released code's backward pass); the
per-layer cost ratio is what matters. Figures (calls interleaved prompt by prompt, lape first):

  1. seconds per prompt of each way, and the speed-up released / lape.  Target >= 3x.
  2. ``max |scores lape - scores released| / max |score|`` over the prompts and attributed layers.
     Target < 1e-4 (the same scores).
  3. peak RSS of lape's way above the loaded model after 1 prompt and after N prompts (measured
     first, before anything else runs in the process; the longest of the N prompts goes first, as
     the peak grows with the prompt's length, not with the number of prompts), their growth in %
     of the model's size (target < 5) and their ratio (target <= 1.1).  Memory flat in the number
     of questions.  Beside them, no target, the released way's peak RSS growth during a prompt (one
     prompt's full-vocabulary logits at every position, ``b`` times over).
  4. (full mode) lape's prompts per second attributing all 18 layers.

Default: 3 prompts, m = 16, memory over 1 and 6 prompts.  ``--quick``: 1 prompt, 1 layer (17),
m = 4, memory over 1 and 2 prompts, no all-layer figure; the speed target is not enforced, nor
the memory ratio (lape's peak above the model is then small, so allocator noise dominates it; the
growth in % of the model's size is enforced).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from common import Report, parser, peak_rss_mb, reset_peak_rss, rss_mb

from lape.hooks import activation_hooks
from lape.keyneurons.attribute import letter_spellings, prompt_ids
from lape.keyneurons.ig import alphas, attribute_prompt
from lape.keyneurons.prompts import prompts_for
from lape.keyneurons.questions import load_questions
from lape.models import load_model
from lape.space import NeuronSpace

RELEASED_BATCH = 8  # the released code's steps per forward pass
LAPE_BATCH = 96  # lape's layer x step rows per pass (AttributeConfig.batch_size)


def released_attribution(model: torch.nn.Module, space: NeuronSpace, ids: torch.Tensor, target: int, *,
                         steps: int, layers: Sequence[int], batch: int = RELEASED_BATCH) -> torch.Tensor:
    """Integrated gradients ``[layers, neurons]`` the released code's way (module docstring)."""
    assert steps % batch == 0, "the released code needs the batch size to divide the number of steps"
    n = space.neurons_per_layer
    scores = torch.zeros(space.num_layers, n)
    prompt = ids[None]  # [1, T]
    for layer in layers:
        # the baseline forward: this layer's activations at the last position
        grabbed: dict[str, torch.Tensor] = {}

        def grab(_layer: int, act: torch.Tensor, grabbed: dict = grabbed) -> None:
            grabbed["act"] = act.reshape(1, -1, n)[0, -1].detach().clone()

        with torch.no_grad(), activation_hooks(model, space, grab, layers=[layer]):
            model(input_ids=prompt)
        base = grabbed["act"]
        grad_sum = torch.zeros(n)
        scale_all = alphas(steps)
        for s in range(0, steps, batch):
            scale = scale_all[s:s + batch]
            x = (scale[:, None] * base.float()).to(base.dtype).requires_grad_(True)

            def patch(_layer: int, act: torch.Tensor, x: torch.Tensor = x) -> torch.Tensor:
                flat = act.reshape(batch, -1, n)
                return torch.cat([flat[:, :-1], x[:, None].to(act.dtype)], dim=1).reshape(act.shape)

            with torch.enable_grad(), activation_hooks(model, space, patch, layers=[layer]):
                logits = model(input_ids=prompt.expand(batch, -1)).logits  # every position
                probs = F.softmax(logits[:, -1, :].float(), dim=-1)
                (grad,) = torch.autograd.grad(probs[:, target].sum(), x)
            grad_sum += grad.float().sum(dim=0)
        scores[layer] = base.float() * grad_sum / steps
    return scores


def _prompts(tok, count: int) -> list[tuple[torch.Tensor, int]]:
    """``(token ids, target letter id)`` of the first template of the first ``count`` questions
    (one question per domain, then the next template of each)."""
    questions = load_questions("builtin:domains", per_cluster=1)
    rendered = [p for t in range(3) for q in questions for p in prompts_for(q)[t:t + 1]]
    if len(rendered) < count:
        raise SystemExit(f"builtin:domains gave {len(rendered)} prompts, fewer than {count}")
    out = []
    for prompt in rendered[:count]:
        spellings = letter_spellings(tok, prompt)
        letters = spellings.get(" ", next(iter(spellings.values())))
        out.append((prompt_ids(tok, prompt.text), letters[prompt.correct]))
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers both ways attribute")
    args = p.parse_args()
    quick = args.quick
    rep = Report("keyneurons", args.json)
    layers = args.layers or ([17] if quick else [0, 8, 17])
    steps, n_time, n_mem = (4, 1, 2) if quick else (16, 3, 6)
    model, tok = load_model("builtin")
    space = NeuronSpace.of(model)
    bad = [layer for layer in layers if not 0 <= layer < space.num_layers]
    if bad:
        raise SystemExit(f"layers {bad} are outside 0..{space.num_layers - 1}")
    prompts = _prompts(tok, max(n_time, n_mem))
    where = (f"layers {' '.join(map(str, layers))} of {space.num_layers}, m={steps}")
    print(f"keyneurons: a layer subset ({where}); prompts of {', '.join(str(len(i)) for i, _ in prompts)} tokens; "
          f"{torch.get_num_threads()} threads", flush=True)

    # 3. memory first, while nothing else has run: lape's way over 1, then N prompts ----------
    model_mb = sum(q.numel() * q.element_size() for q in model.parameters()) / (1 << 20)
    reset_peak_rss(model)
    base = rss_mb()
    growth = []
    for i, (ids, target) in enumerate(sorted(prompts[:n_mem], key=lambda p: -p[0].numel())):
        attribute_prompt(model, space, ids, target, steps=steps, layers=layers, batch_size=LAPE_BATCH)
        if i == 0 or i == n_mem - 1:
            growth.append(peak_rss_mb() - base)
    g1, gn = growth[0], growth[-1]

    # 1-2. time both ways, interleaved prompt by prompt ----------------------------------------
    # the released code's batch must divide the steps: its default 8, else all steps in one pass
    released_batch = RELEASED_BATCH if steps % RELEASED_BATCH == 0 else steps
    spent = {"released": 0.0, "lape": 0.0}
    worst, released_peak = 0.0, 0.0
    for ids, target in prompts[:n_time]:
        t0 = time.perf_counter()
        ours = attribute_prompt(model, space, ids, target, steps=steps, layers=layers, batch_size=LAPE_BATCH).scores
        spent["lape"] += time.perf_counter() - t0
        reset_peak_rss()
        before = rss_mb()
        t0 = time.perf_counter()
        theirs = released_attribution(model, space, ids, target, steps=steps, layers=layers, batch=released_batch)
        spent["released"] += time.perf_counter() - t0
        released_peak = max(released_peak, peak_rss_mb() - before)
        rows = ours[layers], theirs[layers]
        worst = max(worst, float((rows[0] - rows[1]).abs().max() / rows[1].abs().max()))
    sec = {k: v / n_time for k, v in spent.items()}
    rep.figure(f"released way seconds per prompt ({where}, b={released_batch}, {n_time} prompts)",
               sec["released"], "s")
    rep.figure(f"lape seconds per prompt ({where}, batch {LAPE_BATCH}, {n_time} prompts)", sec["lape"], "s")
    speedup = sec["released"] / sec["lape"]
    rep.figure(f"released / lape speed-up ({where})", speedup, "x", target=">= 3", ok=speedup >= 3,
               enforce=not quick)
    rep.figure("max |scores difference| / max |score|", worst, "", target="< 1e-4", ok=worst < 1e-4)

    rep.figure(f"lape peak RSS above model after 1 prompt ({where})", g1, "MB")
    rep.figure(f"lape peak RSS above model after {n_mem} prompts ({where})", gn, "MB")
    pct = 100 * (gn - g1) / model_mb
    rep.figure(f"lape peak RSS growth 1 -> {n_mem} prompts, % of model size ({model_mb:.0f} MB)", pct, "%",
               target="< 5", ok=pct < 5)
    ratio = gn / g1
    rep.figure(f"lape peak RSS growth ratio {n_mem} prompts / 1 prompt", ratio, "x", target="<= 1.1",
               ok=ratio <= 1.1, enforce=not quick)
    rep.figure(f"released way peak RSS growth during one prompt ({where}, b={released_batch})", released_peak, "MB")

    # 4. lape on every layer -------------------------------------------------------------------
    if not quick:
        ids, target = prompts[0]
        t0 = time.perf_counter()
        attribute_prompt(model, space, ids, target, steps=steps, batch_size=LAPE_BATCH)
        rep.figure(f"lape prompts per second, all {space.num_layers} layers (m={steps})",
                   1 / (time.perf_counter() - t0), "prompts/s")
    rep.exit()


if __name__ == "__main__":
    main()
