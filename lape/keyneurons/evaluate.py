"""What key neurons do: boost and suppress them, and predict a question's cluster from them
(Chen et al. 2024, §5.3 and §6; methods.md 4(d)).

For every evaluation prompt (questions the selection never saw, each rendered with the same
templates as the attribution), lape runs the prefix once with a KV cache and then, as one batch
of one-token continuations, the last position unmodified and with each cluster's key neurons
**boosted** (activation x ``boost``, the paper's 2) or **suppressed** (x 0) **at the last
position only**, for every set family:

* ``naica``: the selected key neurons;
* ``na``: plain neuron attribution (the paper's "without ICA" ablation), when given;
* ``random``: for each seed, per cluster the same number of neurons per layer drawn at random.

**Probability change ratio (PCR).** For cluster ``c``: the mean percentage change of the right
letter's probability over ``c``'s prompts (related), and over as many questions drawn (seeded)
from the other clusters (unrelated); ``PCR = |related| / |unrelated|``.

**Editing success.** Over a cluster's related prompts, the share whose most probable letter
flips from wrong to right under boost, and from right to wrong under suppress.

**Neuron-based cluster prediction.** The rule (the paper's own rule is in a supplement that
could not be read): for each prompt, the unmodified last-position activation of every neuron in
any set is standardised over all evaluation prompts (no labels used), and the prompt is assigned
the cluster whose key neurons have the highest mean standardised activation. Accuracy is
reported next to chance (one over the number of clusters) and the random sets.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..errors import LapeError
from ..masks import NeuronSets
from ..models import fingerprint, input_device
from ..space import NeuronSpace
from .attribute import letter_spellings, prompt_ids, question_prompts, templates_key
from .ig import _no_param_grads, _prefix_cache, last_activations, last_position
from .questions import Question, Template, questions_key

OPS = ("boost", "suppress")


@dataclass(frozen=True)
class KeyEvalConfig(StageConfig):
    """Settings of :func:`evaluate_key_neurons`."""

    boost: float = option(2.0, min=0.0, max=100.0)  # factor on boosted activations (paper: 2)
    random_seeds: int = option(3, min=0, max=100)  # random-set draws per cluster
    templates: int = option(3, min=1, max=20)  # prompt templates per question
    seed: int = option(0, min=0)  # option shuffling and unrelated-question sampling
    batch_size: int = option(96, min=1, max=1_000_000, key=False)  # continuations per forward pass


def random_like(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A bool ``[L, N]`` mask with the same number of neurons per layer as ``mask``, at random."""
    out = torch.zeros_like(mask)
    for layer in range(mask.shape[0]):
        k = int(mask[layer].sum())
        if k:
            out[layer, torch.randperm(mask.shape[1], generator=generator)[:k]] = True
    return out


@dataclass
class KeyNeuronEval(artifacts.Artifact):
    """Per evaluation prompt, the right letter's probability and correctness under every edit,
    and the summaries (tables ``pcr``, ``prediction``)."""

    clusters: list[str]
    rows: list[dict[str, Any]]  # one per edit: family, seed, cluster, op
    tensors_: dict[str, torch.Tensor]
    summary: dict[str, list[dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "keyneuron_eval"
    DESCRIPTION: ClassVar[str] = "key-neuron evaluation"

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors_)

    def payload(self) -> Any:
        return {"clusters": self.clusters, "rows": self.rows, "summary": self.summary}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self.summary)

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> KeyNeuronEval:
        return cls(list(payload["clusters"]), list(payload["rows"]), tensors, dict(payload["summary"]), meta)

    def family_summary(self) -> list[dict[str, Any]]:
        """Mean over clusters (and seeds) per family and op: PCR, related and unrelated change,
        editing success; the random family also with the SD over seeds."""
        return self.summary["families"]


def _edit_rows(families: Mapping[str, NeuronSets], clusters: Sequence[str], random_seeds: int, boost: float
               ) -> tuple[list[dict[str, Any]], torch.Tensor]:
    rows, mults = [], []
    base = families["naica"]
    for fam, sets in families.items():
        for c in clusters:
            for op in OPS:
                rows.append({"family": fam, "seed": None, "cluster": c, "op": op})
                mults.append(torch.where(sets.mask(c), boost if op == "boost" else 0.0, 1.0))
    for s in range(random_seeds):
        g = torch.Generator().manual_seed(1_000 + s)
        for c in clusters:
            mask = random_like(base.mask(c), g)
            for op in OPS:
                rows.append({"family": "random", "seed": s, "cluster": c, "op": op})
                mults.append(torch.where(mask, boost if op == "boost" else 0.0, 1.0))
    return rows, torch.stack(mults).float()


def _prompt_pass(model: nn.Module, space: NeuronSpace, tokenizer: Any, prompt: Any, mults: torch.Tensor,
                 batch_size: int) -> tuple[float, bool, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One prompt: unmodified P(right letter), correctness and activations, then P and correctness
    under every row of ``mults`` ``[R, L, N]`` applied at the last position."""
    spellings = letter_spellings(tokenizer, prompt)
    ids = prompt_ids(tokenizer, prompt.text).to(input_device(model))
    cache = _prefix_cache(model, ids)
    acts, logits = last_activations(model, space, ids, cache)
    probs = logits.softmax(-1)
    letters = max(spellings.values(), key=lambda v: float(probs[v].sum()))
    p0, ok0 = float(probs[letters[prompt.correct]]), int(probs[letters].argmax()) == prompt.correct
    ps, oks = [], []
    mults = mults.to(acts.device)
    for s in range(0, mults.shape[0], batch_size):
        chunk = mults[s:s + batch_size]
        out = last_position(model, space, ids, cache, chunk.shape[0],
                            edit=lambda layer, act, chunk=chunk: act * chunk[:, layer].to(act.dtype))
        lp = out.log_softmax(-1)[:, letters]
        ps.append(lp[:, prompt.correct].exp().cpu())
        oks.append((lp.argmax(-1) == prompt.correct).cpu())
    return p0, ok0, torch.cat(ps), torch.cat(oks), acts.float().cpu()


def _sample_unrelated(prompt_cluster: torch.Tensor, prompt_question: torch.Tensor, c: int, seed: int) -> torch.Tensor:
    """Prompt indices of as many questions as cluster ``c`` has, drawn from the other clusters."""
    related_q = sorted(set(prompt_question[prompt_cluster == c].tolist()))
    other_q = sorted(set(prompt_question[prompt_cluster != c].tolist()))
    rng = random.Random(f"{seed}/unrelated/{c}")
    chosen = set(rng.sample(other_q, min(len(related_q), len(other_q))))
    return torch.tensor([i for i, q in enumerate(prompt_question.tolist()) if q in chosen], dtype=torch.long)


def _summaries(clusters: list[str], rows: list[dict[str, Any]], t: Mapping[str, torch.Tensor], seed: int,
               prediction: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    pc, pq = t["prompt_cluster"], t["prompt_question"]
    p0, ok0 = t["base_prob"], t["base_correct"].bool()
    change = 100.0 * (t["probs"] - p0[:, None]) / p0[:, None].clamp(min=1e-12)  # [P, R]
    per_cluster = []
    for r, row in enumerate(rows):
        c = clusters.index(row["cluster"])
        rel = (pc == c).nonzero().flatten()
        unrel = _sample_unrelated(pc, pq, c, seed)
        if not len(rel) or not len(unrel):
            continue
        r_change, u_change = float(change[rel, r].mean()), float(change[unrel, r].mean())
        ok = t["correct"][:, r].bool()
        flips = (~ok0[rel] & ok[rel]) if row["op"] == "boost" else (ok0[rel] & ~ok[rel])
        per_cluster.append({**row, "related_prompts": len(rel), "unrelated_prompts": len(unrel),
                            "related_change": r_change, "unrelated_change": u_change,
                            "pcr": abs(r_change) / max(abs(u_change), 1e-9),
                            "edit_success": float(flips.float().mean())})
    families = []
    for fam in dict.fromkeys(r["family"] for r in per_cluster):
        for op in OPS:
            sel = [r for r in per_cluster if r["family"] == fam and r["op"] == op]
            if not sel:
                continue
            by_seed: dict[Any, list[dict[str, Any]]] = {}
            for r in sel:
                by_seed.setdefault(r["seed"], []).append(r)
            seed_pcr = [sum(r["pcr"] for r in v) / len(v) for v in by_seed.values()]
            mean = sum(seed_pcr) / len(seed_pcr)
            sd = (sum((x - mean) ** 2 for x in seed_pcr) / (len(seed_pcr) - 1)) ** 0.5 if len(seed_pcr) > 1 else 0.0
            families.append({"family": fam, "op": op, "draws": len(by_seed), "pcr": mean, "pcr_sd": sd,
                             "related_change": sum(r["related_change"] for r in sel) / len(sel),
                             "unrelated_change": sum(r["unrelated_change"] for r in sel) / len(sel),
                             "edit_success": sum(r["edit_success"] for r in sel) / len(sel)})
    accuracy = {"prompts": int(len(pc)), "accuracy_unmodified": float(ok0.float().mean()),
                "mean_prob_unmodified": float(p0.mean())}
    return {"per_cluster": per_cluster, "families": families, "prediction": prediction, "answers": [accuracy]}


def _prediction(clusters: list[str], families: Mapping[str, NeuronSets], random_masks: Mapping[int, list[torch.Tensor]],
                acts: torch.Tensor, prompt_cluster: torch.Tensor) -> list[dict[str, Any]]:
    """Accuracy of the standardised-activation rule (module docstring) per family."""
    flat = acts.flatten(1)  # [P, L*N]
    z = (flat - flat.mean(0)) / flat.std(0).clamp(min=1e-6) if flat.shape[0] > 1 else flat
    out = []
    named = {f: [s.mask(c) for c in clusters] for f, s in families.items()}
    named.update({f"random (seed {s})": masks for s, masks in random_masks.items()})
    for name, masks in named.items():
        scores = torch.stack([z[:, m.flatten()].mean(1) if bool(m.any()) else torch.full((len(z),), -1e9)
                              for m in masks], dim=1)  # [P, C]
        acc = float((scores.argmax(1) == prompt_cluster).float().mean())
        out.append({"family": name, "accuracy": acc, "chance": 1.0 / len(clusters), "prompts": int(len(z))})
    return out


def evaluate_key_neurons(model: nn.Module, tokenizer: Any, sets: NeuronSets, questions: Sequence[Question],
                         config: KeyEvalConfig = KeyEvalConfig(), *, na_sets: NeuronSets | None = None,
                         out: str | Path | None = None, space: NeuronSpace | None = None,
                         templates: Mapping[str, Sequence[Template]] | None = None,
                         progress: bool = True) -> KeyNeuronEval:
    """Boost/suppress each cluster's key neurons on held-out questions, against random sets of
    the same size per layer and plain NA; PCR, editing success, cluster prediction (module
    docstring).

    Args:
        sets: key neurons (labels = clusters) from :func:`lape.keyneurons.select.select`.
        questions: evaluation questions, never used for the selection; their clusters must be
            labels of ``sets``.
        na_sets: the "without ICA" selection from the same scores (optional baseline).
        templates: prompt templates per language (default: the shipped ones).
    """
    from tqdm.auto import tqdm

    clusters = list(sets.labels)
    unknown = sorted({q.cluster for q in questions} - set(clusters))
    if unknown:
        raise LapeError(f"questions of cluster(s) {', '.join(unknown)} have no key neurons (the sets have "
                        f"{', '.join(clusters)}): evaluate on the clusters the selection was made for")
    if not questions:
        raise LapeError("no evaluation questions: give the held-out half of the questions")
    space = space or NeuronSpace.of(model)
    sets.check_model(model, space)
    families = {"naica": sets}
    if na_sets is not None:
        families["na"] = na_sets.subset(clusters)
    inputs = {"sets": {f: s.identity() for f, s in families.items()}, "questions": questions_key(questions),
              "vocab": len(tokenizer), "templates": templates_key(templates)}
    key = artifacts.stage_key(KeyNeuronEval.KIND, model_fingerprint=fingerprint(model), config=config.key_dict(),
                              inputs=inputs)

    def compute() -> KeyNeuronEval:
        rows, mults = _edit_rows(families, clusters, config.random_seeds, config.boost)
        random_masks = {s: [] for s in range(config.random_seeds)}
        for r, row in enumerate(rows):
            if row["family"] == "random" and row["op"] == "boost":
                random_masks[row["seed"]].append(mults[r] != 1.0)
        prompts = [(qi, p) for qi, q in enumerate(questions)
                   for p in question_prompts(q, templates, config.templates, config.seed)]
        base_p, base_ok, ps, oks, acts = [], [], [], [], []
        with _no_param_grads(model), torch.no_grad():
            for _, p in tqdm(prompts, desc="key-neuron eval", unit="prompt", disable=not progress, leave=False):
                p0, ok0, pr, ok, act = _prompt_pass(model, space, tokenizer, p, mults, config.batch_size)
                base_p.append(p0)
                base_ok.append(ok0)
                ps.append(pr)
                oks.append(ok)
                acts.append(act)
        t = {"base_prob": torch.tensor(base_p), "base_correct": torch.tensor(base_ok, dtype=torch.float32),
             "probs": torch.stack(ps), "correct": torch.stack(oks).float(),
             "prompt_cluster": torch.tensor([clusters.index(questions[qi].cluster) for qi, _ in prompts]),
             "prompt_question": torch.tensor([qi for qi, _ in prompts])}
        prediction = _prediction(clusters, families, random_masks, torch.stack(acts), t["prompt_cluster"])
        summary = _summaries(clusters, rows, t, config.seed, prediction)
        meta = artifacts.model_sidecar(KeyNeuronEval.KIND, model, space, languages=clusters, config=config.to_dict(),
                                       inputs=inputs, questions=len(questions), prompts=len(prompts),
                                       set_sizes={f: s.counts() for f, s in families.items()},
                                       prediction_rule="argmax over clusters of the mean standardised unmodified "
                                                       "last-position activation of the cluster's key neurons")
        return KeyNeuronEval(clusters, rows, t, summary, meta)

    return artifacts.run_stage(KeyNeuronEval, out, key, compute, model=model)
