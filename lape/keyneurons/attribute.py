"""The attribution pass of the key-neuron method (Chen et al. 2024, NA-ICA / QRNCA, step 2).

Every question is rendered with ``templates`` prompt templates of its language (options shuffled
per template, :func:`lape.keyneurons.prompts.prompts_for`). For each prompt:

1. **The answer token.** A letter can be spelled as a bare piece (``"A"``) or with a leading
   space (``" A"``); the released code always takes ``convert_tokens_to_ids("A")``, which for
   SentencePiece vocabularies may not be the token the model predicts after ``"Answer:"``. lape
   tokenises the prompt followed by each spelling, keeps spellings that add exactly one token per
   letter, and uses the one whose letters get the most probability from the unmodified model.
2. **Integrated gradients** of that token's probability over every layer's neurons at the last
   position (:func:`lape.keyneurons.ig.attribute_prompt`), with the per-layer completeness delta.
3. **The adaptive threshold** ``t``: scores above ``t x`` the prompt's maximum are kept.

Per question, the kept scores are summed over templates (the query's "cluster" is their
support), next to the sum of *all* raw scores (the paper's normaliser ``Z``, used by
:mod:`lape.keyneurons.select`). The pass runs in :func:`lape.runningstats.tally`, one group per
cluster label: resumable, with a progress bar, questions sharded over ``torchrun`` ranks (each
rank fills its own questions' rows, and the sum over ranks equals one process).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..corpora.identity import corpus_key
from ..errors import LapeError
from ..models import input_device
from ..runningstats import RunningSums, dist_info, shard, stage_cache, tally
from ..space import NeuronSpace
from .ig import ablation_effects, attribute_prompt, normalises_mlp_output
from .prompts import Prompt, Question, Template, prompts_for, templates_for
from .questions import questions_key

logger = logging.getLogger(__name__)
COMPLETENESS_OK = 0.2  # median |delta| / |P(a) - P(b)| below which the scores are called integrated gradients

SPELLINGS = ("", " ")  # a letter as a bare piece, or after a space
BASELINES = ("auto", "zero", "mean")


@dataclass(frozen=True)
class AttributeConfig(StageConfig):
    """Settings of :func:`attribute` (defaults: the paper's, methods.md 4(c))."""

    steps: int = option(16, min=1, max=1024)  # IG Riemann steps m (paper 16; released code 20)
    threshold: float = option(0.2, gt=0.0, max=1.0)  # keep scores above t x the prompt's maximum
    templates: int = option(3, min=1, max=20)  # prompt templates per question (paper: 3)
    seed: int = option(0, min=0)  # option shuffling seed
    baseline: str = option("auto", choices=BASELINES)  # IG baseline: zero (paper), mean (the layer's mean
    # activation over reference text of the question's language), auto (mean where the model normalises its MLP
    # output, so zero-baseline IG is degenerate; zero elsewhere)
    reference_tokens: int = option(2048, min=16)  # reference-text tokens per language for the mean baseline
    reference_corpus: str = "builtin"  # corpus manifest of the reference text
    validate_top: int = option(16, min=0, max=4096)  # per prompt, the top-K neurons by |score| checked against
    # exact single-neuron ablation (Spearman correlation; 0: no check)
    batch_size: int = option(96, min=1, max=1_000_000, key=False)  # layer x step rows per pass
    checkpoint_every: int = option(4, min=1, key=False)  # questions between resume checkpoints


@dataclass
class KeyNeuronScores(artifacts.Artifact):
    """Attribution of every question, grouped by cluster.

    Attributes:
        clusters: cluster labels, in order.
        uids: ``{cluster: [question uid, ...]}``; row ``q`` of the cluster's tensors.
        tensors_: ``{f"{cluster}/{name}": tensor}`` with, per cluster of ``Q`` questions and ``T``
            templates, ``kept`` ``[Q, layers, neurons]`` (above-threshold scores summed over
            templates), ``total`` ``[Q]`` (all raw scores summed: the paper's ``Z``), ``abs_total``
            ``[Q]`` (all absolute raw scores summed: ``Z`` where completeness fails), ``raw`` ``[layers, neurons]``
            (raw scores summed over the cluster's prompts), ``prob`` ``[Q, T]`` (unmodified
            probability of the right letter), ``correct`` ``[Q, T]`` (1 when the right letter is
            the most probable letter), ``gap`` ``[Q, T, layers]`` (``P - P(baseline at layer)``),
            ``delta`` ``[Q, T, layers]`` (completeness delta) and ``rank_corr`` ``[Q, T]`` (Spearman
            correlation of the top-K scores with exact single-neuron ablation; NaN when not checked).
    """

    clusters: list[str]
    uids: dict[str, list[str]]
    tensors_: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "keyneuron_scores"
    DESCRIPTION: ClassVar[str] = "key-neuron attribution"

    def get(self, cluster: str, name: str) -> torch.Tensor:
        """One tensor of one cluster (see the class docstring)."""
        if cluster not in self.uids:
            raise LapeError(f"cluster {cluster!r} is not in these scores (they have {', '.join(self.clusters)})")
        return self.tensors_[f"{cluster}/{name}"]

    def completeness(self) -> dict[str, float]:
        """Median and 90th percentile of ``|delta| / |P - P(0)|`` over prompts x layers where the gap
        is above 1e-4, and the median absolute delta."""
        deltas = torch.cat([self.get(c, "delta").flatten() for c in self.clusters])
        gaps = torch.cat([self.get(c, "gap").flatten() for c in self.clusters])
        big = gaps.abs() > 1e-4
        rel = (deltas[big].abs() / gaps[big].abs()) if bool(big.any()) else torch.zeros(1)
        return {"median_abs_delta": float(deltas.abs().median()), "median_rel_delta": float(rel.median()),
                "p90_rel_delta": float(rel.quantile(0.9)), "holds": bool(float(rel.median()) < COMPLETENESS_OK)}

    def ranking_check(self) -> dict[str, Any]:
        """The median over prompts of the Spearman correlation between each prompt's top-K scores and
        the exact single-neuron ablation effects, with its bootstrap 95% interval over prompts."""
        from ..intervals import bootstrap

        corr = torch.cat([self.get(c, "rank_corr").flatten() for c in self.clusters])
        corr = corr[torch.isfinite(corr)].double().numpy()
        if corr.size == 0:
            return {"prompts": 0}
        iv = bootstrap(corr, np.median)
        return {"prompts": int(corr.size), "median_spearman": iv.to_dict(),
                "positive_share": float((corr > 0).mean())}

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors_)

    def payload(self) -> Any:
        return {"clusters": self.clusters, "uids": self.uids}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> KeyNeuronScores:
        return cls(list(payload["clusters"]), {k: list(v) for k, v in payload["uids"].items()}, tensors, meta)

    def validate(self) -> None:
        for c in self.clusters:
            for name in ("kept", "total", "abs_total", "raw", "prob", "correct", "gap", "delta", "rank_corr"):
                t = self.tensors_.get(f"{c}/{name}")
                if t is None or not bool(torch.isfinite(t).all() if name != "rank_corr" else True):
                    raise LapeError(f"key-neuron scores of cluster {c!r} lack a finite {name!r} tensor: the artifact "
                                    "was edited or damaged; re-run lape keyneurons attribute")
            if self.get(c, "kept").shape[0] != len(self.uids[c]):
                raise LapeError(f"cluster {c!r} has {self.get(c, 'kept').shape[0]} rows of scores for "
                                f"{len(self.uids[c])} questions: re-run lape keyneurons attribute")


class _ClusterSums(RunningSums):
    def __init__(self, questions: int, templates: int, space: NeuronSpace) -> None:
        L, N = space.shape
        super().__init__({"kept": torch.zeros(questions, L, N), "total": torch.zeros(questions),
                          "abs_total": torch.zeros(questions), "rank_corr": torch.zeros(questions, templates),
                          "raw": torch.zeros(L, N), "prob": torch.zeros(questions, templates),
                          "correct": torch.zeros(questions, templates), "gap": torch.zeros(questions, templates, L),
                          "delta": torch.zeros(questions, templates, L), "spaced": torch.zeros(questions, templates)})


def letter_spellings(tokenizer: Any, prompt: Prompt) -> dict[str, list[int]]:
    """``{spelling: [token id per letter]}`` for the spellings (:data:`SPELLINGS`) whose letters
    each add exactly one token after the prompt, the prompt's own tokens unchanged."""
    base = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    found = {}
    for sep in SPELLINGS:
        ids = []
        for letter in prompt.letters:
            full = tokenizer(prompt.text + sep + letter, add_special_tokens=False)["input_ids"]
            if full[:len(base)] != base or len(full) != len(base) + 1:
                break
            ids.append(full[-1])
        if len(ids) == len(prompt.letters) and len(set(ids)) == len(ids):
            found[sep] = ids
    if not found:
        raise LapeError(f"template {prompt.template.name!r} ({prompt.template.language}): no spelling of the option "
                        "letters is one token after the prompt with this tokenizer; end the template with a cue "
                        "such as 'Answer:'")
    return found


def prompt_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """The prompt's token ids with the tokenizer's BOS when it adds one (as the model saw in training)."""
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def question_prompts(question: Question, templates: Mapping[str, Sequence[Template]] | None, count: int,
                     seed: int) -> list[Prompt]:
    """The first ``count`` prompts of a question (``templates``: per language; default the shipped ones)."""
    chosen = templates_for(question.language, templates) if templates is not None else None
    prompts = prompts_for(question, chosen, seed=seed)[:count]
    if len(prompts) < count:
        raise LapeError(f"language {question.language!r} has {len(prompts)} templates, fewer than templates="
                        f"{count}: add templates or lower --templates")
    return prompts


def templates_key(templates: Mapping[str, Sequence[Template]] | None) -> str | None:
    """A content hash of custom templates (``None``: the shipped ones)."""
    if templates is None:
        return None
    return artifacts.content_hash({lang: [[t.name, t.text] for t in ts] for lang, ts in sorted(templates.items())})


def rank_correlation(model: nn.Module, space: NeuronSpace, ids: torch.Tensor, target: int, scores: torch.Tensor,
                     top: int, baseline: torch.Tensor | None = None) -> float:
    """Spearman correlation between a prompt's ``top`` scores by magnitude and the exact effect of
    setting each of those neurons alone to its baseline (:func:`~lape.keyneurons.ig.ablation_effects`);
    NaN when either side is constant."""
    k = min(top, scores.numel())
    idx = scores.flatten().abs().topk(k).indices
    n = scores.shape[1]
    neurons = [(int(i) // n, int(i) % n) for i in idx]
    exact = ablation_effects(model, space, ids, target, neurons, baseline=baseline)
    est = scores.flatten()[idx]
    if k < 3 or float(exact.std()) == 0.0 or float(est.std()) == 0.0:
        return float("nan")
    return float(spearmanr(est.numpy(), exact.numpy()).statistic)


def _step(model: nn.Module, space: NeuronSpace, tokenizer: Any, config: AttributeConfig, stat: _ClusterSums,
          q: int, question: Question, templates: Mapping[str, Sequence[Template]] | None,
          baselines: Mapping[str, torch.Tensor] | None) -> int:
    prompts = question_prompts(question, templates, config.templates, config.seed)
    units = 0
    for t, prompt in enumerate(prompts):
        spellings = letter_spellings(tokenizer, prompt)
        watch = [i for ids in spellings.values() for i in ids]
        chosen: dict[str, str] = {}

        def pick(probs: torch.Tensor, spellings: dict = spellings, chosen: dict = chosen,
                 prompt: Any = prompt) -> int:
            mass = {sep: float(probs[ids].sum()) for sep, ids in spellings.items()}
            chosen["sep"] = max(mass, key=lambda s: (mass[s], s == " "))
            return spellings[chosen["sep"]][prompt.correct]

        ids = prompt_ids(tokenizer, prompt.text)
        baseline = baselines[question.language] if baselines is not None else None
        res = attribute_prompt(model, space, ids, pick, steps=config.steps, batch_size=config.batch_size,
                               baseline=baseline, watch=watch)
        stat.sums["rank_corr"][q, t] = (rank_correlation(model, space, ids, res.target, res.scores, config.validate_top,
                                                         baseline) if config.validate_top else float("nan"))
        scores = res.scores.to(stat.sums["kept"].device)
        top = float(scores.max())
        kept = torch.where(scores > config.threshold * top, scores, torch.zeros_like(scores)) if top > 0 \
            else torch.zeros_like(scores)
        stat.sums["kept"][q] += kept
        stat.sums["total"][q] += float(scores.sum())
        stat.sums["abs_total"][q] += float(scores.abs().sum())
        stat.sums["raw"] += scores
        stat.sums["prob"][q, t] = res.prob
        letter_ids = spellings[chosen["sep"]]
        letter_probs = res.probs[[watch.index(i) for i in letter_ids]]
        stat.sums["correct"][q, t] = float(int(letter_probs.argmax()) == prompt.correct)
        stat.sums["gap"][q, t] = (res.prob - res.prob_base).to(stat.sums["gap"].device)
        stat.sums["delta"][q, t] = res.convergence_delta().to(stat.sums["gap"].device)
        stat.sums["spaced"][q, t] = float(chosen["sep"] == " ")
        units += 1
    return units


def attribute(model: nn.Module, tokenizer: Any, questions: Sequence[Question],
              config: AttributeConfig = AttributeConfig(), *, out: str | Path | None = None,
              space: NeuronSpace | None = None, templates: Mapping[str, Sequence[Template]] | None = None,
              reference: Any = None, progress: bool = True) -> KeyNeuronScores:
    """Integrated-gradient attribution of every question (module docstring).

    Args:
        model, tokenizer: a causal LM and its tokenizer (:func:`lape.load_model`).
        questions: the questions (:func:`lape.keyneurons.questions.load_questions`).
        config: steps, threshold, templates, seed.
        out: folder for the result (and its resume checkpoints); a finished result made from
            the same inputs is returned without recomputation.
        space: the model's neuron space (found automatically).
        templates: prompt templates per language (default: the shipped ones; a question
            manifest's own: :func:`lape.keyneurons.questions.question_templates`).
        reference: :class:`~lape.neurons.stats.ActivationStats` whose per-language mean activation
            is the ``mean`` baseline (default: recorded here from ``config.reference_corpus``,
            ``config.reference_tokens`` per language, when the baseline is ``mean``).
        progress: show a progress bar (prompts).

    Example:
        >>> qs = load_questions("builtin:domains", per_cluster=10)
        >>> scores = attribute(model, tok, qs, out="runs/kn/scores")
    """
    if not questions:
        raise LapeError("no questions to attribute: give at least one (e.g. --questions builtin:domains)")
    if torch.is_inference_mode_enabled():
        raise LapeError("attribution needs gradients: call it outside torch.inference_mode()")
    uids = [q.uid for q in questions]
    if len(set(uids)) != len(uids):
        dup = next(u for u in uids if uids.count(u) > 1)
        raise LapeError(f"question uid {dup!r} occurs twice: give every question a distinct uid")
    space = space or NeuronSpace.of(model)
    clusters = list(dict.fromkeys(q.cluster for q in questions))
    by_cluster = {c: [q for q in questions if q.cluster == c] for c in clusters}
    languages = sorted({q.language for q in questions})
    # the cache key needs no forward pass: "auto" resolves the same way for the same model (its fingerprint is in the
    # key), and the reference text is keyed by what it is read from
    streams, missing_text = None, None
    if config.baseline != "zero" and reference is None:
        try:
            streams = reference_streams(tokenizer, languages, config)
        except LapeError as exc:  # "auto" needs the text only on a model that normalises its MLP output
            if config.baseline == "mean":
                raise
            missing_text = exc
    ref_key = (reference.identity() if reference is not None
               else {lang: corpus_key(stream) for lang, stream in streams.items()} if streams is not None else None)
    inputs = {"questions": questions_key(questions), "tokenizer": getattr(tokenizer, "name_or_path", ""),
              "vocab": len(tokenizer), "templates": templates_key(templates), "reference": ref_key}
    key, done = stage_cache(KeyNeuronScores, model, config, inputs, out)
    if done is not None:
        return done
    normalised = normalises_mlp_output(model, space)
    baseline = config.baseline if config.baseline != "auto" else ("mean" if normalised else "zero")
    baselines = None
    if baseline == "mean":
        if reference is None:
            if missing_text is not None:
                raise missing_text
            reference = reference_stats(model, streams, config)
        baselines = mean_baselines(reference, languages, space)
    rank, world = dist_info()
    per_question = config.templates
    results, report = tally(
        clusters, lambda c: _ClusterSums(len(by_cluster[c]), per_question, space).to(input_device(model)),
        lambda c: shard(enumerate(by_cluster[c]), rank, world),
        lambda stat, item: _step(model, space, tokenizer, config, stat, item[0], item[1], templates, baselines),
        key=key, checkpoint_dir=Path(out) / "partial" if out is not None else None,
        checkpoint_every=config.checkpoint_every, progress=progress, desc="attribute", unit="prompt",
        total=lambda c: len(by_cluster[c]) * per_question)
    tensors = {f"{c}/{k}": v for c in clusters for k, v in results[c].items() if k != "spaced"}
    spaced = sum(float(results[c]["spaced"].sum()) for c in clusters)
    n_prompts = sum(len(by_cluster[c]) for c in clusters) * per_question
    scores = KeyNeuronScores(clusters, {c: [q.uid for q in by_cluster[c]] for c in clusters}, tensors)
    completeness = scores.completeness()
    scores.meta = artifacts.model_sidecar(
        KeyNeuronScores.KIND, model, space, languages=languages,
        config=config.to_dict(), inputs=inputs, cache_key=key,
        method=attribution_name(baseline, normalised, completeness["holds"]),
        baseline=baseline, normalises_mlp_output=normalised,
        questions={c: len(by_cluster[c]) for c in clusters}, prompts=n_prompts,
        spaced_letter_share=round(spaced / max(n_prompts, 1), 4), seconds=round(report.seconds, 2),
        prompts_per_second=round(report.per_second * world, 3), world_size=world,
        resumed_clusters=report.resumed_groups)
    scores.meta["completeness"] = completeness
    scores.meta["ranking_check"] = scores.ranking_check()
    scores.from_cache = False  # type: ignore[attr-defined]
    if out is not None and rank == 0:
        scores.save(out)
    return scores


def attribution_name(baseline: str, normalised: bool, holds: bool) -> str:
    """What the scores are, in words: integrated gradients only where completeness holds; on a model
    that normalises its MLP output the zero-baseline scores are ``H_m x grad x activation``."""
    what = "of P(answer letter) at the last position (Chen et al. 2024 key neurons)"
    if baseline == "zero" and normalised:
        return (f"grad x activation x H_m (attribution patching) {what}: zero-baseline integrated gradients are "
                "degenerate on a model that normalises its MLP output")
    name = f"integrated gradients from the {'zero' if baseline == 'zero' else 'mean-activation'} baseline {what}"
    return name if holds else f"{name}; completeness fails (median relative gap >= {COMPLETENESS_OK}): read as grad x activation"


def reference_streams(tokenizer: Any, languages: Sequence[str], config: AttributeConfig) -> dict[str, Any]:
    """``config.reference_tokens`` tokens of each language's training text in ``config.reference_corpus``:
    the mean baseline's text (read lazily; their keys identify it in the cache key)."""
    from ..corpora import load_corpus, load_manifest

    manifest = load_manifest(config.reference_corpus)
    missing = [lang for lang in languages if lang not in manifest.languages]
    if missing:
        raise LapeError(f"the mean IG baseline needs reference text in {', '.join(missing)}, which corpus "
                        f"{config.reference_corpus!r} lacks: give --reference-corpus a manifest with them, or "
                        "--baseline zero")
    return load_corpus(manifest, tokenizer, split="train", tokens_per_language=config.reference_tokens,
                       seq_len=min(256, config.reference_tokens), seed=config.seed, languages=list(languages))


def reference_stats(model: nn.Module, streams: Mapping[str, Any], config: AttributeConfig) -> Any:
    """Activation statistics of the reference text (:func:`lape.neurons.stats.record`, not saved): the
    source of the mean baseline."""
    from ..neurons.stats import RecordConfig, record

    return record(model, streams, RecordConfig(tokens_per_language=config.reference_tokens,
                                               seq_len=min(256, config.reference_tokens), batch_size=4,
                                               seed=config.seed), progress=False)


def mean_baselines(stats: Any, languages: Sequence[str], space: NeuronSpace) -> dict[str, torch.Tensor]:
    """``{language: float32 [layers, neurons]}``: each language's mean activation over its reference
    text (the mean IG baseline)."""
    missing = [lang for lang in languages if lang not in stats.languages]
    if missing:
        raise LapeError(f"the reference statistics lack {', '.join(missing)} (they have "
                        f"{', '.join(stats.languages)}): record them with those languages, or use --baseline zero")
    means = stats.mean_activation()
    if tuple(means.shape[1:]) != space.shape:
        raise LapeError(f"the reference statistics are of a {tuple(means.shape[1:])} neuron space, the model's is "
                        f"{space.shape}: record them with this model")
    return {lang: means[stats.languages.index(lang)].float() for lang in languages}
