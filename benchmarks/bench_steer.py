"""Steering generation vs plain generation: tokens/s ratio.  Target >= 0.9.

Same prompts, same number of new tokens (greedy, no early stop), interleaved repetitions. Two
steered variants: one target for the whole batch (``intervene`` with labels), and one target per
prompt (``batch_edits``, as ``Steerer.evaluate`` runs every target language in one batch).
"""

from __future__ import annotations

import torch
from common import Report, interleaved, parser

from lape import NeuronSets, load_model
from lape.intervene import batch_edits, intervene
from lape.space import NeuronSpace


def main() -> None:
    args = parser(__doc__).parse_args()
    rep = Report("steering", args.json)
    model, tok = load_model("builtin")
    space = NeuronSpace.of(model)
    # a LAPE-sized set (369 neurons, spread over all layers) with fixed values: the cost of steering
    # does not depend on which neurons are chosen
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, *space.shape, dtype=torch.bool)
    masks.view(2, -1)[0, torch.randperm(space.num_neurons, generator=g)[:369]] = True
    masks.view(2, -1)[1, torch.randperm(space.num_neurons, generator=g)[:40]] = True
    sets = NeuronSets(["fr", "en"], masks)
    prompts = ["The weather this morning was", "My grandmother always told me that",
               "The history of the city begins with", "Scientists have recently discovered that"]
    tok.padding_side = "left"  # as Steerer generates (decoder-only models pad on the left)
    enc = tok(prompts, return_tensors="pt", padding=True)
    new = 8 if args.quick else 48

    def gen() -> None:
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    def steered() -> None:
        with intervene(model, sets, deactivate=["en"], activate={"fr": 1.0}, space=space, check_model=False):
            gen()

    mixed = batch_edits(sets, [{"deactivate": ["en"], "activate": {"fr": 1.0}}, {"activate": {"en": 2.0}},
                               {}, {"deactivate": ["fr"]}])

    def per_prompt() -> None:
        with intervene(model, edits=mixed, space=space, check_model=False):
            gen()

    times = interleaved({"plain": gen, "steered": steered, "per-prompt steered": per_prompt},
                        repeats=1 if args.quick else 3)
    n = len(prompts) * new
    for k, v in times.items():
        rep.figure(f"{k} generation", n / v, "tokens/s")
    for k in ("steered", "per-prompt steered"):
        ratio = times["plain"] / times[k]
        rep.figure(f"{k} / plain tokens/s", ratio, "x", target=">= 0.9", ok=ratio >= 0.9, enforce=not args.quick)
    rep.exit()


if __name__ == "__main__":
    main()
