"""What key neurons do: boost and suppress them, and predict a question's cluster from them
(Chen et al. 2024, §5.3 and §6; methods.md 4(d)), with a 95% interval beside every figure.

For every evaluation prompt (questions the selection never saw, each rendered with the same
templates as the attribution), lape runs the prefix once with a KV cache and then, as one batch
of one-token continuations, the last position unmodified and with each cluster's neurons
**boosted** (activation x ``boost``, the paper's 2) or **suppressed** (x 0) **at the last
position only**, for every set family:

* ``naica``: the selected key neurons;
* ``na``: plain neuron attribution (the paper's "without ICA" ablation), when given;
* ``random``: for each seed, per cluster the same number of neurons per layer drawn at random;
* ``activation``: the paper's Activation baseline: per cluster and layer, the ``k_l`` neurons
  with the highest mean activation at the last position over the cluster's selection prompts,
  ``k_l`` the key neurons' count in layer ``l`` (the same count **per layer**, so the same total);
* ``random-act``: for each seed, random neurons matched on the count per layer **and** on size:
  per layer the neurons are ranked by mean |activation| at the last position over all selection
  prompts and cut into ``activation_bins`` equal-size rank bins (ties broken by index); for each
  key neuron one neuron is drawn, without replacement, from the key neuron's own bin in its layer.

The activation statistics come from one unedited pass over the selection questions' prompts (or,
when none are given, over the evaluation prompts; the sidecar's ``activation_source`` says which).

**Probability change ratio (PCR).** For cluster ``c`` and edit row ``r_c`` (``c``'s set edited):
``change_p = 100 (P_edited - P_unedited) / P_unedited`` of the right letter; related = the mean
over ``c``'s prompts, unrelated = the mean over the prompts of as many questions drawn (seeded)
from the other clusters, ``PCR_c = |related| / |unrelated|``. A family's PCR is the mean of
``PCR_c`` over clusters (and draws), as in the paper; beside it the **pooled PCR**, one ratio of
means over every prompt of every cluster::

    pooled = |sum_c sum_{p in rel(c)} change_p / sum_c |rel(c)|| / |sum_c sum_{p in unrel(c)} change_p / sum_c |unrel(c)||

and the **log-probability difference** ``dlogp_p = log P_edited - log P_unedited`` (nats),
averaged like the percentage change (related, unrelated, and related - unrelated).

**Intervals.** Every figure carries a percentile bootstrap 95% interval over **questions**
(:func:`lape.intervals.bootstrap`'s draws, as counts from :func:`~lape.intervals.bootstrap_weights`,
so that every resample is one matrix product): the evaluation questions are resampled with replacement, each
keeping all its prompts (templates) and its roles (related for its own cluster, unrelated for the
clusters whose control sample holds it), and the figure is recomputed from the resampled prompts.
Related and unrelated questions are different questions (no pairing), so each group is resampled
with the question set it belongs to. For the random families the figure and its interval are the
mean over draws; every draw also has its own row (``summary["sets"]``), and with several draws the
family row adds the SD over draws.

**Editing success.** Over a cluster's related prompts, the share whose most probable letter
flips from wrong to right under boost, and from right to wrong under suppress.

**Neuron-based cluster prediction.** The rule (the paper's own rule is in a supplement that
could not be read): for each prompt, the unmodified last-position activation of every neuron in
any set is standardised over all evaluation prompts (no labels used), and the prompt is assigned
the cluster whose key neurons have the highest mean standardised activation. Accuracy over
prompts, with a Wilson 95% interval counted over **questions** (``n`` = questions, successes =
accuracy x questions: the prompts of one question are not independent), next to chance and the
baselines.

**Judging.** :func:`judge` compares the key neurons' interval with every baseline set's (``na``,
``activation``, each random draw of both random families): the sentence says "as in the paper"
only when the key neurons' interval lies above every baseline's; otherwise it names the baselines
it overlaps or that score higher.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .. import artifacts
from ..autograd import gradients_for
from ..config import StageConfig, option
from ..errors import LapeError
from ..fingerprint import fingerprint
from ..intervals import Interval, bootstrap_weights, percentile_interval, wilson
from ..intervene import Edit
from ..masks import NeuronSets, random_like_mask
from ..models import input_device
from ..space import NeuronSpace
from .attribute import letter_spellings, prompt_ids, question_prompts, templates_key
from .baselines import activation_matched_like, top_activation_like
from .ig import last_activations, last_position, prefix_cache
from .prompts import Question, Template
from .questions import questions_key

OPS = ("boost", "suppress")
FAMILY_ORDER = ("naica", "na", "activation", "random", "random-act")  # display order
METRICS = ("pcr", "pooled_pcr", "related_change", "unrelated_change", "related_dlogp", "unrelated_dlogp",
           "dlogp_gap", "edit_success")


@dataclass(frozen=True)
class KeyEvalConfig(StageConfig):
    """Settings of :func:`evaluate_key_neurons`."""

    boost: float = option(2.0, min=0.0, max=100.0)  # factor on boosted activations (paper: 2)
    random_seeds: int = option(3, min=0, max=100)  # draws per random family (count-matched, activation-matched)
    templates: int = option(3, min=1, max=20)  # prompt templates per question
    activation_bins: int = option(10, min=1, max=1000)  # rank bins of mean |activation| for random-act (deciles)
    resamples: int = option(2000, min=10, max=100_000)  # bootstrap resamples of the questions
    seed: int = option(0, min=0)  # option shuffling, unrelated-question sampling, bootstrap
    batch_size: int = option(96, min=1, max=1_000_000, key=False)  # continuations per forward pass


@dataclass
class KeyNeuronEval(artifacts.Artifact):
    """Per evaluation prompt, the right letter's probability and correctness under every edit,
    the activation statistics behind the baselines, and the summaries (``per_cluster``, ``sets``,
    ``families``, ``verdicts``, ``prediction``, ``answers``; intervals as ``{value, low, high}``)."""

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
        """Per family and op: ``draws``, and each of :data:`METRICS` as ``{value, low, high}`` (mean
        over clusters and draws, bootstrap 95% interval over questions); ``pcr_sd``: the SD of
        the PCR over draws (0 for one draw: show none then)."""
        return self.summary["families"]

    def verdicts(self) -> list[dict[str, Any]]:
        """The judging sentences (:func:`judge`), one per op and figure and for prediction."""
        return list(self.summary.get("verdicts", []))

    def validate(self) -> None:
        if "sets" not in self.summary or "verdicts" not in self.summary:
            raise LapeError("this key-neuron evaluation was made by an older lape (no intervals): re-run "
                            "lape keyneurons eval")

    def family_rows(self) -> list[list[str]]:
        """:data:`FAMILY_HEADER` rows, formatted (the report's and the README's table)."""
        return [[r["family"], r["op"], str(r["draws"]), pcr_text(r), fmt_interval(r["pooled_pcr"]),
                 fmt_interval(r["related_change"], 1, signed=True, unit="%"),
                 fmt_interval(r["unrelated_change"], 1, signed=True, unit="%"),
                 fmt_interval(r["related_dlogp"], 3, signed=True), fmt_interval(r["unrelated_dlogp"], 3, signed=True),
                 fmt_interval(r["edit_success"], 1, scale=100, unit="%")] for r in self.family_summary()]

    def prediction_rows(self) -> list[list[str]]:
        """:data:`PREDICTION_HEADER` rows, formatted."""
        return [[r["family"], fmt_interval(r["accuracy"], 1, scale=100, unit="%"), f"{100 * r['chance']:.1f}%"]
                for r in self.summary["prediction"]]


FAMILY_HEADER = ("set", "edit", "draws", "PCR", "pooled PCR", "related change", "unrelated change",
                 "Δlog P related", "Δlog P unrelated", "edit success")
PREDICTION_HEADER = ("set", "accuracy", "chance")


def fmt_interval(d: Mapping[str, float], digits: int = 2, *, signed: bool = False, scale: float = 1.0,
                 unit: str = "") -> str:
    """``{value, low, high}`` as ``"+12.3% [+4.1, +20.0]"`` (``"-"`` for NaN bounds).

    Example:
        >>> fmt_interval({"value": 2.5, "low": 1.0, "high": 4.0})
        '2.50 [1.00, 4.00]'
    """
    spec = f"{'+' if signed else ''}.{digits}f"

    def one(x: float) -> str:
        return format(x * scale, spec) if np.isfinite(x) else "-"

    return f"{one(d['value'])}{unit} [{one(d['low'])}, {one(d['high'])}]"


def pcr_text(row: Mapping[str, Any]) -> str:
    """A family row's PCR with its 95% interval over questions, and the SD over draws only where
    there are several draws: ``"11.10 [3.20, 20.10]"``, ``"2.61 [1.90, 3.40], SD 1.52 over 3 draws"``."""
    text = fmt_interval(row["pcr"])
    return text + (f", SD {row['pcr_sd']:.2f} over {row['draws']} draws" if row["draws"] > 1 else "")


def _edit_rows(families: Mapping[str, NeuronSets], clusters: Sequence[str], random_seeds: int, boost: float,
               extra: Mapping[tuple[str, int | None], Sequence[torch.Tensor]] | None = None
               ) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Edit rows (family, seed, cluster, op) and their multipliers ``[R, L, N]``: ``families``,
    then the count-matched random draws (generator seeds 1000 + s), then ``extra``
    (``{(family, seed): [mask per cluster]}``)."""
    rows, mults = [], []

    def add(fam: str, seed: int | None, c: str, mask: torch.Tensor) -> None:
        for op in OPS:
            rows.append({"family": fam, "seed": seed, "cluster": c, "op": op})
            mults.append(torch.where(mask, boost if op == "boost" else 0.0, 1.0))

    base = families["naica"]
    for fam, sets in families.items():
        for c in clusters:
            add(fam, None, c, sets.mask(c))
    for s in range(random_seeds):
        g = torch.Generator().manual_seed(1_000 + s)
        for c in clusters:
            add("random", s, c, random_like_mask(base.mask(c), g))
    for (fam, seed), masks in (extra or {}).items():
        for c, mask in zip(clusters, masks, strict=True):
            add(fam, seed, c, mask)
    return rows, torch.stack(mults).float()


def _prompt_pass(model: nn.Module, space: NeuronSpace, tokenizer: Any, prompt: Any, mults: torch.Tensor,
                 batch_size: int) -> tuple[float, bool, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One prompt: unmodified P(right letter), correctness and activations, then P and correctness
    under every row of ``mults`` ``[R, L, N]`` applied at the last position."""
    spellings = letter_spellings(tokenizer, prompt)
    ids = prompt_ids(tokenizer, prompt.text).to(input_device(model))
    cache = prefix_cache(model, ids)
    acts, logits = last_activations(model, space, ids, cache)
    probs = logits.softmax(-1)
    letters = max(spellings.values(), key=lambda v: float(probs[v].sum()))
    p0, ok0 = float(probs[letters[prompt.correct]]), int(probs[letters].argmax()) == prompt.correct
    ps, oks = [], []
    mults = mults.to(acts.device)
    for s in range(0, mults.shape[0], batch_size):
        chunk = mults[s:s + batch_size]
        everyone = torch.arange(chunk.shape[-1])
        edits = [Edit(layer, everyone, "mul", chunk[:, layer, None]) for layer in range(chunk.shape[1])
                 if bool((chunk[:, layer] != 1).any())]  # a factor of 1 changes nothing
        out = last_position(model, space, ids, cache, chunk.shape[0], edits)
        lp = out.log_softmax(-1)[:, letters]
        ps.append(lp[:, prompt.correct].exp().cpu())
        oks.append((lp.argmax(-1) == prompt.correct).cpu())
    return p0, ok0, torch.cat(ps), torch.cat(oks), acts.float().cpu()


def _activation_means(model: nn.Module, space: NeuronSpace, tokenizer: Any, prompts: Sequence[tuple[int, Any]],
                      n_clusters: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Unedited last-position activations over ``prompts`` ``[(cluster index, prompt)]``: the mean
    per cluster ``[C, L, N]`` and the mean |activation| over all of them ``[L, N]`` (float32)."""
    from tqdm.auto import tqdm

    sums = torch.zeros(n_clusters, *space.shape, dtype=torch.float64)
    abs_sum = torch.zeros(space.shape, dtype=torch.float64)
    counts = torch.zeros(n_clusters, dtype=torch.float64)
    with torch.no_grad():
        for c, p in tqdm(prompts, desc="key-neuron eval: activations", unit="prompt", disable=not progress,
                         leave=False):
            ids = prompt_ids(tokenizer, p.text).to(input_device(model))
            acts = last_activations(model, space, ids, prefix_cache(model, ids))[0].double().cpu()
            sums[c] += acts
            abs_sum += acts.abs()
            counts[c] += 1
    return (sums / counts.clamp(min=1)[:, None, None]).float(), (abs_sum / max(len(prompts), 1)).float()


def unrelated_questions(prompt_cluster: torch.Tensor, prompt_question: torch.Tensor, n_clusters: int,
                        seed: int) -> torch.Tensor:
    """Each cluster's control sample, bool ``[clusters, questions]``: as many questions as the
    cluster has, drawn (seeded) from the other clusters' questions. Saved in the artifact
    (``unrelated_questions``), so every figure can be recomputed from it."""
    questions = int(prompt_question.max()) + 1 if len(prompt_question) else 0
    out = torch.zeros(n_clusters, questions, dtype=torch.bool)
    for c in range(n_clusters):
        related_q = sorted(set(prompt_question[prompt_cluster == c].tolist()))
        other_q = sorted(set(prompt_question[prompt_cluster != c].tolist()))
        rng = random.Random(f"{seed}/unrelated/{c}")
        out[c, rng.sample(other_q, min(len(related_q), len(other_q)))] = True
    return out


# --------------------------------------------------------------------------------------------
# Figures with intervals over questions


def _group_figures(table: np.ndarray, weights: np.ndarray, n_clusters: int, draws: int,
                   valid: np.ndarray) -> dict[str, np.ndarray]:
    """Each of :data:`METRICS` of a question table (:func:`_question_table`) for every row of
    ``weights`` ``[B, Q]`` (how often each question is drawn; a row of ones gives the point value).

    ``table`` holds one row per question: prompts ``n_q``, cluster, ``C`` flags "in cluster c's
    unrelated sample", then per-question sums over its prompts of the percentage change, the
    log-probability difference and the flip indicator, ``[3, draws, C]`` flattened (column ``c``:
    cluster ``c``'s set edited). Means are over prompts, ``sum_q w_q S_q / sum_q w_q n_q``; PCR and
    the other figures are then averaged over the ``valid`` clusters and the draws.
    """
    C, D, B, Q = n_clusters, draws, len(weights), len(table)
    n, cl, unrel = table[:, 0], table[:, 1], table[:, 2:2 + C]
    sums = table[:, 2 + C:].reshape(Q, 3, D, C)
    rel_ind = (cl[:, None] == np.arange(C)).astype(np.float64)  # [Q, C]
    rel_n, un_n = weights @ (rel_ind * n[:, None]), weights @ (unrel * n[:, None])  # [B, C] prompts
    rel_s = (weights @ (sums * rel_ind[:, None, None, :]).reshape(Q, -1)).reshape(B, 3, D, C)
    un_s = (weights @ (sums * unrel[:, None, None, :]).reshape(Q, -1)).reshape(B, 3, D, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (rel_s / rel_n[:, None, None, :])[..., valid]  # [B, 3, D, C'] means over prompts
        un = (un_s / un_n[:, None, None, :])[..., valid]
        pooled_rel = rel_s[:, 0][..., valid].sum(-1) / rel_n[:, valid].sum(-1)[:, None]  # [B, D]
        pooled_un = un_s[:, 0][..., valid].sum(-1) / un_n[:, valid].sum(-1)[:, None]
    return {"pcr": (np.abs(rel[:, 0]) / np.maximum(np.abs(un[:, 0]), 1e-9)).mean((1, 2)),
            "pooled_pcr": (np.abs(pooled_rel) / np.maximum(np.abs(pooled_un), 1e-9)).mean(1),
            "related_change": rel[:, 0].mean((1, 2)), "unrelated_change": un[:, 0].mean((1, 2)),
            "related_dlogp": rel[:, 1].mean((1, 2)), "unrelated_dlogp": un[:, 1].mean((1, 2)),
            "dlogp_gap": (rel[:, 1] - un[:, 1]).mean((1, 2)), "edit_success": rel[:, 2].mean((1, 2))}


def _question_table(per_prompt: torch.Tensor, prompt_question: torch.Tensor, q_cluster: np.ndarray,
                    unrel: np.ndarray, row_index: Sequence[Sequence[int]]) -> np.ndarray:
    """The question table of one group of edit rows (``row_index[d][c]``: draw ``d``, cluster ``c``);
    ``per_prompt`` ``[3, P, R]`` (change, dlogp, flip) is summed over each question's prompts."""
    Q = len(q_cluster)
    idx = torch.tensor(row_index, dtype=torch.long)  # [D, C]
    vals = per_prompt[:, :, idx].double()  # [3, P, D, C]
    sums = torch.zeros(Q, 3, *idx.shape, dtype=torch.float64)  # [Q, 3, D, C]
    sums.index_add_(0, prompt_question, vals.permute(1, 0, 2, 3))
    n = torch.bincount(prompt_question, minlength=Q).double().numpy()
    return np.concatenate([n[:, None], q_cluster[:, None].astype(np.float64), unrel.astype(np.float64),
                           sums.reshape(Q, -1).numpy()], axis=1)


def judge(what: str, key: Interval, baselines: Mapping[str, Interval], paper: bool = True,
          percent: bool = False) -> dict[str, Any]:
    """The sentence that judges ``key`` (the key neurons' figure) against every baseline's 95%
    interval: "as in the paper" (``paper=True``; else "separated from every baseline") only when
    ``key.low`` lies above every baseline's ``high``; otherwise the baselines it overlaps and those
    above it are named (``percent``: rates written as percentages). A NaN bound never counts as
    separated.

    Example:
        >>> judge("PCR", Interval(9, 6, 12), {"random": Interval(2, 1, 3)})["as_in_paper"]
        True
    """
    def sep_above(a: Interval, b: Interval) -> bool:
        return bool(np.isfinite(a.low) and np.isfinite(b.high) and a.low > b.high)

    above = [n for n, b in baselines.items() if sep_above(b, key)]
    overlap = [n for n, b in baselines.items() if not sep_above(key, b) and n not in above]
    ok = bool(baselines) and not above and not overlap
    def fmt(iv: Interval) -> str:
        return iv.format(percent=percent)

    k = fmt(key)
    if not baselines:
        sentence = f"{what} of the key neurons is {k}; there is no baseline to compare it with."
    elif ok:
        top = max(baselines, key=lambda n: baselines[n].high)
        lead = "As in the paper" if paper else "Separated from every baseline"
        sentence = (f"{lead}: {what} of the key neurons, {k}, lies above the 95% interval of every baseline "
                    f"(the highest: {top} {fmt(baselines[top])}).")
    else:
        bits = []
        if overlap:
            bits.append("overlaps " + ", ".join(f"{n} {fmt(baselines[n])}" for n in overlap))
        if above:
            bits.append("lies below " + ", ".join(f"{n} {fmt(baselines[n])}" for n in above))
        sentence = f"Not separated from the baselines: {what} of the key neurons, {k}, " + " and ".join(bits) + "."
    return {"what": what, "as_in_paper": ok, "overlaps": overlap, "below": above, "sentence": sentence}


def _summaries(clusters: list[str], rows: list[dict[str, Any]], t: Mapping[str, torch.Tensor], seed: int,
               prediction: list[dict[str, Any]], resamples: int = 2000) -> dict[str, list[dict[str, Any]]]:
    """The evaluation's tables from its per-prompt tensors (module docstring): ``per_cluster``
    (point values per edit row), ``sets`` (per set, draw and op, every :data:`METRICS` figure with
    its interval over questions), ``families`` (draws together, SD of the PCR over draws),
    ``verdicts`` (:func:`judge` against every other set), ``prediction`` and ``answers``."""
    pc, pq = t["prompt_cluster"], t["prompt_question"]
    p0, ok0 = t["base_prob"], t["base_correct"].bool()
    change = 100.0 * (t["probs"] - p0[:, None]) / p0[:, None].clamp(min=1e-12)  # [P, R]
    dlogp = t["probs"].clamp(min=1e-38).log() - p0[:, None].clamp(min=1e-38).log()  # [P, R] nats
    ok = t["correct"].bool()
    is_boost = torch.tensor([r["op"] == "boost" for r in rows])
    flips = torch.where(is_boost, ~ok0[:, None] & ok, ok0[:, None] & ~ok).float()  # [P, R]
    C, Q = len(clusters), int(pq.max()) + 1 if len(pq) else 0
    q_cluster = np.zeros(Q, dtype=np.int64)
    q_cluster[pq.numpy()] = pc.numpy()
    unrel_q = t["unrelated_questions"].bool().numpy().T.copy()  # [Q, C]
    valid = np.zeros(C, dtype=bool)
    unrel_prompts = {}
    for c in range(C):
        unrel_prompts[c] = torch.from_numpy(unrel_q[:, c])[pq].nonzero().flatten()
        valid[c] = bool((pc == c).any()) and len(unrel_prompts[c]) > 0
    per_cluster = []
    for r, row in enumerate(rows):
        c = clusters.index(row["cluster"])
        rel, unrel = (pc == c).nonzero().flatten(), unrel_prompts[c]
        if not valid[c]:
            continue
        r_change, u_change = float(change[rel, r].mean()), float(change[unrel, r].mean())
        per_cluster.append({**row, "related_prompts": len(rel), "unrelated_prompts": len(unrel),
                            "related_change": r_change, "unrelated_change": u_change,
                            "pcr": abs(r_change) / max(abs(u_change), 1e-9),
                            "related_dlogp": float(dlogp[rel, r].mean()),
                            "unrelated_dlogp": float(dlogp[unrel, r].mean()),
                            "edit_success": float(flips[rel, r].mean())})
    per_prompt = torch.stack([change, dlogp, flips])  # [3, P, R]
    where = {(r["family"], r["seed"], r["cluster"], r["op"]): i for i, r in enumerate(rows)}

    weights = np.vstack([np.ones((1, Q)), bootstrap_weights(Q, resamples=resamples, seed=seed)])

    def figures(fam: str, seeds: list[Any], op: str) -> dict[str, dict[str, float]]:
        index = [[where[(fam, s, c, op)] for c in clusters] for s in seeds]
        table = _question_table(per_prompt, pq, q_cluster, unrel_q, index)
        return {m: percentile_interval(float(v[0]), v[1:]).to_dict()
                for m, v in _group_figures(table, weights, C, len(seeds), valid).items()}

    sets, families = [], []
    if valid.any():
        present = dict.fromkeys(r["family"] for r in rows)
        for fam in [f for f in FAMILY_ORDER if f in present] + [f for f in present if f not in FAMILY_ORDER]:
            seeds = list(dict.fromkeys(r["seed"] for r in rows if r["family"] == fam))
            for op in OPS:
                per_draw = []
                for s in seeds:
                    figs = figures(fam, [s], op)
                    sets.append({"family": fam, "seed": s, "op": op, **figs})
                    per_draw.append(figs["pcr"]["value"])
                figs = figures(fam, seeds, op) if len(seeds) > 1 else {m: sets[-1][m] for m in METRICS}
                sd = float(np.std(per_draw, ddof=1)) if len(per_draw) > 1 else 0.0
                families.append({"family": fam, "op": op, "draws": len(seeds), **figs, "pcr_sd": sd})
    verdicts = []
    for op in OPS:
        key = [r for r in sets if r["family"] == "naica" and r["op"] == op]
        if not key:
            continue
        base = {_set_name(r): r for r in sets if r["family"] != "naica" and r["op"] == op}
        for metric, what in (("pcr", f"the {op} PCR"), ("pooled_pcr", f"the pooled {op} PCR")):
            verdicts.append({"op": op, "metric": metric, **judge(
                what, Interval.from_dict(key[0][metric]),
                {n: Interval.from_dict(r[metric]) for n, r in base.items()})})
    key_pred = [r for r in prediction if r["family"] == "naica"]
    if key_pred:
        base = {r["family"]: Interval.from_dict(r["accuracy"]) for r in prediction if r["family"] != "naica"}
        chance = key_pred[0]["chance"]
        base["chance"] = Interval(chance, chance, chance)
        verdicts.append({"op": None, "metric": "prediction", **judge(
            "cluster-prediction accuracy", Interval.from_dict(key_pred[0]["accuracy"]), base, paper=False,
            percent=True)})
    accuracy = {"prompts": int(len(pc)), "questions": Q, "accuracy_unmodified": float(ok0.float().mean()),
                "mean_prob_unmodified": float(p0.mean())}
    return {"per_cluster": per_cluster, "sets": sets, "families": families, "verdicts": verdicts,
            "prediction": prediction, "answers": [accuracy]}


def _set_name(row: Mapping[str, Any]) -> str:
    """``naica``, ``random (seed 0)``: a set's name in tables and sentences."""
    return row["family"] if row["seed"] is None else f"{row['family']} (seed {row['seed']})"


def _prediction(clusters: list[str], named: Mapping[str, Sequence[torch.Tensor]], acts: torch.Tensor,
                prompt_cluster: torch.Tensor, prompt_question: torch.Tensor) -> list[dict[str, Any]]:
    """Accuracy of the standardised-activation rule (module docstring) per set (``named``: one
    mask per cluster), with a Wilson 95% interval over questions."""
    flat = acts.flatten(1)  # [P, L*N]
    z = (flat - flat.mean(0)) / flat.std(0).clamp(min=1e-6) if flat.shape[0] > 1 else flat
    questions = int(prompt_question.max()) + 1 if len(prompt_question) else 0
    out = []
    for name, masks in named.items():
        scores = torch.stack([z[:, m.flatten()].mean(1) if bool(m.any()) else torch.full((len(z),), -1e9)
                              for m in masks], dim=1)  # [P, C]
        acc = float((scores.argmax(1) == prompt_cluster).float().mean())
        interval = wilson(acc * questions, questions)
        out.append({"family": name, "accuracy": Interval(acc, interval.low, interval.high).to_dict(),
                    "chance": 1.0 / len(clusters), "prompts": int(len(z)), "questions": questions})
    return out


def evaluate_key_neurons(model: nn.Module, tokenizer: Any, sets: NeuronSets, questions: Sequence[Question],
                         config: KeyEvalConfig = KeyEvalConfig(), *, na_sets: NeuronSets | None = None,
                         selection: Sequence[Question] | None = None,
                         out: str | Path | None = None, space: NeuronSpace | None = None,
                         templates: Mapping[str, Sequence[Template]] | None = None,
                         progress: bool = True) -> KeyNeuronEval:
    """Boost/suppress each cluster's key neurons on held-out questions, against random sets of
    the same size per layer (and of the same mean |activation| too), the Activation baseline and
    plain NA; PCR, pooled PCR, log-probability difference, editing success, cluster prediction,
    each with a 95% interval, and the judging sentences (module docstring).

    Args:
        sets: key neurons (labels = clusters) from :func:`lape.keyneurons.select.select`.
        questions: evaluation questions, never used for the selection; their clusters must be
            labels of ``sets``.
        na_sets: the "without ICA" selection from the same scores (optional baseline).
        selection: the questions the key neurons were selected on: their unedited activations
            choose the Activation baseline and bin the activation-matched random sets (default:
            the evaluation questions' own, said in the sidecar).
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
    if selection is not None:
        selection = [q for q in selection if q.cluster in clusters]
        missing = [c for c in clusters if not any(q.cluster == c for q in selection)]
        if missing:
            raise LapeError(f"the selection questions have none of cluster(s) {', '.join(missing)}: give the "
                            "questions the key neurons were selected on")
        shared = sorted({q.uid for q in selection} & {q.uid for q in questions})
        if shared:
            raise LapeError(f"{len(shared)} question(s) (e.g. {shared[0]!r}) are both selection and evaluation "
                            "questions: give the two halves of one split")
    space = space or NeuronSpace.of(model)
    sets.check_model(model, space)
    families = {"naica": sets}
    if na_sets is not None:
        families["na"] = na_sets.subset(clusters)
    inputs = {"sets": {f: s.identity() for f, s in families.items()}, "questions": questions_key(questions),
              "selection": questions_key(selection) if selection is not None else None,
              "vocab": len(tokenizer), "templates": templates_key(templates)}
    key = artifacts.stage_key(KeyNeuronEval.KIND, model_fingerprint=fingerprint(model), config=config.key_dict(),
                              inputs=inputs)

    def compute() -> KeyNeuronEval:
        prompts = [(qi, p) for qi, q in enumerate(questions)
                   for p in question_prompts(q, templates, config.templates, config.seed)]
        source = selection if selection is not None else questions
        act_prompts = [(clusters.index(q.cluster), p) for q in source
                       for p in question_prompts(q, templates, config.templates, config.seed)]
        with gradients_for(model, ()), torch.no_grad():
            act_mean, abs_mean = _activation_means(model, space, tokenizer, act_prompts, len(clusters), progress)
        key_masks = [sets.mask(c) for c in clusters]
        top_masks = [top_activation_like(m, act_mean[i]) for i, m in enumerate(key_masks)]
        matched: dict[int, list[torch.Tensor]] = {}
        for s in range(config.random_seeds):
            g = torch.Generator().manual_seed(2_000 + s)
            matched[s] = [activation_matched_like(m, abs_mean, config.activation_bins, g) for m in key_masks]
        extra = {("activation", None): top_masks, **{("random-act", s): m for s, m in matched.items()}}
        rows, mults = _edit_rows(families, clusters, config.random_seeds, config.boost, extra)
        named: dict[str, list[torch.Tensor]] = {}
        for r, row in enumerate(rows):
            if row["op"] == "boost":
                named.setdefault(_set_name(row), []).append(mults[r] != 1.0)
        base_p, base_ok, ps, oks, acts = [], [], [], [], []
        with gradients_for(model, ()), torch.no_grad():
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
             "prompt_question": torch.tensor([qi for qi, _ in prompts]),
             "act_mean": act_mean, "act_abs_mean": abs_mean, "activation_masks": torch.stack(top_masks),
             "random_act_masks": (torch.stack([torch.stack(m) for m in matched.values()]) if matched
                                  else torch.zeros(0, len(clusters), *space.shape, dtype=torch.bool))}
        t["random_masks"] = torch.stack([torch.stack([mults[r] != 1.0 for r, row in enumerate(rows)
                                                      if row["family"] == "random" and row["seed"] == s
                                                      and row["op"] == "boost"]) for s in range(config.random_seeds)]
                                        ) if config.random_seeds else t["random_act_masks"][:0]
        t["unrelated_questions"] = unrelated_questions(t["prompt_cluster"], t["prompt_question"], len(clusters),
                                                       config.seed)
        prediction = _prediction(clusters, named, torch.stack(acts), t["prompt_cluster"], t["prompt_question"])
        summary = _summaries(clusters, rows, t, config.seed, prediction, config.resamples)
        meta = artifacts.model_sidecar(
            KeyNeuronEval.KIND, model, space, languages=clusters, config=config.to_dict(), inputs=inputs,
            questions=len(questions), prompts=len(prompts), set_sizes={f: s.counts() for f, s in families.items()},
            activation_source="selection questions" if selection is not None else "evaluation questions",
            activation_prompts=len(act_prompts),
            activation_baseline="per cluster and layer, the top neurons by mean activation at the last position "
                                "over the cluster's prompts; the key neurons' count per layer",
            activation_matching=f"per layer, {config.activation_bins} equal-size rank bins of mean |activation| at "
                                "the last position over all prompts; one random neuron from each key neuron's bin",
            prediction_rule="argmax over clusters of the mean standardised unmodified last-position activation of "
                            "the cluster's key neurons",
            intervals=f"bootstrap over questions ({config.resamples} resamples, 95% percentile); prediction: "
                      "Wilson with n = questions")
        return KeyNeuronEval(clusters, rows, t, summary, meta)

    return artifacts.run_stage(KeyNeuronEval, out, key, compute, model=model)
