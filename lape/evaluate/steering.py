"""Steer the output language by switching neurons during ``generate()`` (Tang et al. §5).

A :class:`Steerer` holds a model, its neuron sets, recorded stats and optionally a steering
profile (:mod:`lape.evaluate.steer_profile`: a :class:`~lape.evaluate.steer_rule.SteeringRule`
per target language). ``steer(prompt, to="fr")`` generates the unsteered and the steered
continuation (by default Tang et al.'s rule: the source language's neurons off, the target's set
to their recorded value, each prompt's first token left alone) and identifies the language of
each with ``py3langid`` (offline). ``evaluate`` scores a prompt set next to its controls (random
neurons with the same values, the source on or off, no n-gram ban, the plain settings) and,
given a real-text reference, the outputs' fluency (:mod:`lape.evaluate.fluency`).
:func:`lape.evaluate.steer_repl.repl` is the interactive loop.

A steered output counts as a **success** when ``py3langid`` identifies the target language on at
least ``min_chars`` characters (a member of the target's macrolanguage counts: Egyptian Arabic
``arz`` is Arabic, :data:`lape.langid.MACROLANGUAGE_MEMBERS`), **and** it is written in the
target's script: at least :data:`lape.langid.MIN_SCRIPT_SHARE` (0.5) of its non-blank characters
are letters of that script (Han for zh, kana or Han for ja, Hangul for ko, Arabic for ar,
Cyrillic for ru, Latin for fr...; :func:`lape.langid.script_share`), **and** the output is not
degenerate: distinct-2 (distinct token bigrams / all bigrams) >= 0.5 and no single token makes up
more than a third of it. A run of "肉肉肉肉", of blank characters or of fullwidth commas (which
``py3langid`` labels ``wuu``, a member of zh) fails whatever the identifier says.

Every success rate ``k / n`` of a table (per target, per control, pooled over targets) carries its
Wilson 95% interval (:func:`lape.intervals.wilson`; :func:`rate_interval`).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..errors import LapeError
from ..fingerprint import fingerprint
from ..intervene import VALUE_RULES, batch_edits, check_layers, intervene
from ..langid import identify, in_script, labels_of_language, langid_version, script_rule
from ..masks import NeuronSets
from ..models import input_device
from ..neurons.stats import ActivationStats
from ..space import NeuronSpace
from .fluency import FluencyReference, non_letter_share, text_nll
from .steer_rule import MODES, SteeringRule
from .steering_result import CONTROLS, SteeringEval, mean_of, median_of

if TYPE_CHECKING:
    from .steer_profile import SteeringProfile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SteerConfig(StageConfig):
    """Settings of steering: generation, and the default :class:`SteeringRule` (``mode``,
    ``strength``, ``value``, ``layers``, ``source_scale``, ``exclusive``) that a calibrated
    steering profile overrides per target language.

    ``no_repeat_ngram_size=4``: greedy decoding of a 270M model loops. Even *unsteered*
    continuations of native Chinese prompts pass the success rule only 75% of the time with
    repetition penalty 1.1 alone (Japanese 81%, Arabic 88%), a ceiling no neuron setting can beat;
    forbidding verbatim 4-gram repeats lifts it to 94-100% in every language while natural text
    keeps its distinct-2 (0.96-0.99). It applies to unsteered and steered generation alike.
    """

    max_new_tokens: int = option(32, min=1, max=4096)  # continuation length: long enough for language ID
    mode: str = option("replace", choices=MODES)  # add: + strength x difference of means; replace: set a value
    strength: float = option(1.5, min=0.0, max=100.0)  # multiplies the added direction or the set value
    value: str = option("firing_mean", choices=VALUE_RULES)  # replace only: firing_mean (mean activation where
    # the neuron fired) or mean (over all tokens)
    layers: tuple[int, ...] | None = option(None, min=0)  # restrict edits to these layers (None: all)
    source_scale: float = option(0.0, min=0.0, max=1.0)  # factor on the source's neurons (0: off, 1: untouched)
    exclusive: bool = False  # steer with the target's neurons that no other language's set has
    skip_first: bool = True  # leave each prompt's first token (the attention sink) unedited (ReCoVeR)
    repetition_penalty: float = option(1.1, gt=0.0, max=10.0)  # as in Tang et al.'s generation.py
    no_repeat_ngram_size: int = option(4, min=0, max=64)  # forbid repeating any n-gram of this size (0: off)
    min_chars: int = option(20, min=1)  # shortest output language ID is trusted on
    batch_size: int = option(96, min=1, max=4096, key=False)  # prompts generated together (each with its own
    # target): a decoding step reads the whole 262k x 640 LM head, so wide batches cost little extra

    def rule(self) -> SteeringRule:
        """The default steering rule these settings describe."""
        return SteeringRule(mode=self.mode, strength=self.strength, value=self.value, layers=self.layers,
                            source_scale=self.source_scale, exclusive=self.exclusive)


def source_language(source: str | None) -> str | None:
    """The source language whose neurons are switched off: ``None`` (or ``"none"``) for none."""
    return None if source in (None, "", "none") else source


def check_languages(sets: NeuronSets, targets: Iterable[str], source: str | None) -> None:
    """Refuse, before any generation, targets or a source without a neuron set, and a source
    that is also a target (nothing would be switched)."""
    source = source_language(source)
    for lang, what in [*((t, "target") for t in targets), *([(source, "source")] if source else [])]:
        if lang not in sets.labels:
            raise LapeError(f"{what} language {lang!r} has no neuron set: choose one of {', '.join(sets.labels)}")
    if source and source in targets:
        raise LapeError(f"source and target are both {source!r}: steer towards another language, or pass --from none")


def distinct_n(tokens: Sequence[int], n: int = 2) -> float:
    """Distinct n-grams / all n-grams; 0.0 when there are fewer than ``n`` tokens (nothing to judge)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def max_token_share(tokens: Sequence[int]) -> float:
    """The share of the most frequent token."""
    return max(Counter(tokens).values()) / len(tokens) if tokens else 1.0


@dataclass
class Generation:
    """One continuation with its language and degeneracy measures."""

    text: str
    tokens: list[int]
    language: str | None
    distinct_2: float
    max_token_share: float
    nll: float | None = None  # mean NLL of the tokens under the unmodified model (when scored)
    label: str | None = None  # the identifier's raw label when it differs from ``language`` ("arz")

    @property
    def shown_language(self) -> str:
        """The language, with the raw label when it was counted as its macrolanguage (``ar/arz``)."""
        return f"{self.language}/{self.label}" if self.label else (self.language or "?")

    def success(self, target: str) -> bool:
        """Target language identified, in the target's script and not degenerate (see the module
        docstring)."""
        return (self.language == target and self.distinct_2 >= 0.5 and self.max_token_share <= 1 / 3
                and in_script(self.text, target))


@dataclass
class SteerOutput:
    """One prompt's unsteered and steered continuation, the rule, and what it edited."""

    prompt: str
    target: str
    source: str | None
    unsteered: Generation
    steered: Generation
    rule: SteeringRule | None = None
    edited: str = ""  # e.g. "48 neurons in 12 layers (0-17)"
    from_profile: bool = False
    reference: FluencyReference | None = None

    def format(self) -> str:
        def show(label: str, g: Generation, lang: str | None) -> str:
            ok = ("ok" if g.success(self.target) else "--") if label != "unsteered" else "  "
            extra = ""
            if self.reference is not None and g.nll is not None and lang in self.reference.languages:
                extra = f" ppl x{self.reference.ratio(lang, g.nll):.1f} of real {lang} text"
            return (f"{label:<10} [{g.shown_language}] {ok} d2={g.distinct_2:.2f}{extra} "
                    f"non-letters {non_letter_share(g.text):.0%}\n           {g.text.strip()!r}")
        src = self.source or "none"
        how = ""
        if self.rule is not None:
            how = f"\nsteering   {self.rule.describe()}; {self.edited}" + (" (profile)" if self.from_profile else "")
        return (f"prompt     {self.prompt!r}{how}\n{show('unsteered', self.unsteered, self.unsteered.language)}\n"
                f"{show(f'{src}->{self.target}', self.steered, self.target)}")


class Steerer:
    """Generate with and without neuron steering.

    Example:
        >>> s = Steerer(model, tok, sets, stats)
        >>> print(s.steer("The weather today is", to="fr").format())
    """

    def __init__(self, model: nn.Module, tokenizer: Any, sets: NeuronSets, stats: ActivationStats,
                 config: SteerConfig = SteerConfig(), profile: SteeringProfile | None = None) -> None:
        self.model, self.tokenizer, self.sets, self.stats, self.config = model, tokenizer, sets, stats, config
        self.space = NeuronSpace.of(model)
        sets.check_model(model, self.space)
        check_layers(config.layers or (), self.space.num_layers)  # before any generation
        stats.check_model(model)
        if stats.shape != sets.shape:
            raise LapeError(f"the stats ({stats.shape[0]} x {stats.shape[1]}) do not match the neuron sets "
                            f"({sets.shape[0]} x {sets.shape[1]}): use stats and neurons of one model")
        if profile is not None:
            profile.check(model, sets)
        self.profile = profile
        self.use_profile = profile is not None  # False: the plain settings of ``config`` for every target

    def rule_for(self, target: str) -> SteeringRule:
        """The rule that steers towards ``target``: the profile's when one is in use, else the settings'."""
        if self.use_profile and self.profile is not None and target in self.profile.rules:
            return self.profile.rules[target]
        return self.config.rule()

    def generate(self, prompts: Sequence[str], target: str | Sequence[str | None] | None = None,
                 source: str | None = None, strength: float | Sequence[float | None] | None = None,
                 progress: bool = False, *, rule: SteeringRule | Sequence[SteeringRule | None] | None = None,
                 random_seed: int | Sequence[int | None] | None = None) -> list[Generation]:
        """Greedy continuations of ``prompts``, steered towards ``target`` when given.

        ``target`` and ``strength`` are one value for every prompt or one per prompt (a ``None``
        target leaves that prompt unsteered); prompts with different targets share a batch.
        ``rule`` replaces :meth:`rule_for`; ``random_seed`` gives the random control: the same
        edits (per-layer counts, values, rule and strength) moved to random neurons, one fixed
        draw per seed and target language. Both are one value or one per prompt.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        n = len(prompts)
        per_prompt = [list(v) if isinstance(v, (list, tuple)) else [v] * n
                      for v in (target, strength, rule, random_seed)]
        if any(len(v) != n for v in per_prompt):
            raise LapeError(f"{n} prompts but {len(per_prompt[0])} targets and {len(per_prompt[1])} strengths: give "
                            "one value or one per prompt")
        requests = [self._request(t, source, s, r, seed) for t, s, r, seed in zip(*per_prompt)]
        results: list[Generation] = []
        for start in tqdm(range(0, n, cfg.batch_size), desc="generate", unit="batch", disable=not progress):
            chunk = requests[start:start + cfg.batch_size]
            edits = batch_edits(self.sets, chunk, stats=self.stats)
            with intervene(self.model, edits=edits, space=self.space, check_model=False, skip_first=cfg.skip_first):
                results += self._generate(list(prompts[start:start + cfg.batch_size]))
        return results

    def _request(self, target: str | None, source: str | None, strength: float | None,
                 rule: SteeringRule | None = None, random_seed: int | None = None) -> dict[str, Any]:
        """The :func:`batch_edits` request of one prompt (checked: languages, strength, layers)."""
        if target is None:
            return {}
        source = source_language(source)
        check_languages(self.sets, [target] if source != target else [], source)  # to the source: nothing to switch off
        rule = rule or self.rule_for(target)
        if strength is not None:
            if not isinstance(strength, (int, float)) or isinstance(strength, bool):
                raise LapeError(f"steering strength {strength!r} is not a number: give e.g. 1.5")
            rule = rule.replace(strength=float(strength))  # the same bounds as --strength
        check_layers(rule.layers or (), self.space.num_layers)
        request = rule.request(target, source)
        if random_seed is not None:
            request["relocate_seed"] = int(random_seed) * 1009 + self.sets.labels.index(target)
        return request

    def _generate(self, prompts: list[str]) -> list[Generation]:
        tok = self.tokenizer
        old_side, old_pad = tok.padding_side, tok.pad_token
        tok.padding_side = "left"
        if tok.pad_token_id is None:  # pad with EOS for this call only; the caller's tokenizer is left as it was
            tok.pad_token = tok.eos_token
        pad_id = tok.pad_token_id
        try:
            enc = tok(prompts, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old_side
            if old_pad is None:
                tok.pad_token = None
        device = input_device(self.model)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                max_new_tokens=self.config.max_new_tokens, do_sample=False,
                repetition_penalty=self.config.repetition_penalty, pad_token_id=pad_id,
                **({"no_repeat_ngram_size": self.config.no_repeat_ngram_size}
                   if self.config.no_repeat_ngram_size else {}))
        new = out[:, enc.input_ids.shape[1]:].tolist()
        gens = []
        for ids in new:
            ids = [t for t in ids if t != pad_id]
            if tok.eos_token_id in ids:
                ids = ids[:ids.index(tok.eos_token_id)]
            text = tok.decode(ids, skip_special_tokens=True)
            language, label = identify(text, self.config.min_chars)
            gens.append(Generation(text, ids, language, distinct_n(ids, 2), max_token_share(ids),
                                   label=label if label != language else None))
        return gens

    def steer(self, prompt: str, to: str, source: str | None = "en", strength: float | None = None,
              reference: FluencyReference | None = None) -> SteerOutput:
        """The unsteered and the steered continuation of one prompt, with the rule used, the
        neurons it edits and (given a ``reference``) both outputs' fluency."""
        check_languages(self.sets, [to], source)
        request = self._request(to, source, strength)  # checks first
        rule = self.rule_for(to) if strength is None else self.rule_for(to).replace(strength=float(strength))
        plain, steered = self.generate([prompt, prompt], target=[None, to], source=source, strength=[None, strength])
        if reference is not None:
            for g, v in zip((plain, steered), text_nll(self.model, [plain.tokens, steered.tokens],
                                                       getattr(self.tokenizer, "bos_token_id", None))):
                g.nll = v
        edits = batch_edits(self.sets, [request], stats=self.stats)
        return SteerOutput(prompt, to, source, plain, steered, rule, describe_edits(edits),
                           self.use_profile and self.profile is not None and to in self.profile.rules, reference)

    def evaluate(self, prompts: Sequence[str], targets: Iterable[str], source: str | None = "en",
                 strengths: Sequence[float] | None = None, progress: bool = True,
                 examples_per_target: int = 3, *, controls: Iterable[str] = (), random_seeds: Sequence[int] = (0,),
                 reference: FluencyReference | None = None, prompt_set: str | None = None,
                 out: str | Path | None = None) -> SteeringEval:
        """Success, language, degeneracy and (with ``reference``) fluency per target, next to
        the unsteered outputs of the same prompts and the chosen controls.

        Args:
            prompts: English prompt openings (score held-out figures on ``builtin:test`` only).
            targets: target languages.
            source: the language whose neurons the rule scales down (``None``: none).
            strengths: a sweep of strengths (default: each target's rule's own).
            controls: any of :data:`CONTROLS`: ``random`` (the same edits on random neurons,
                one draw per seed in ``random_seeds``), ``source_on`` / ``source_off`` (the
                rule with the source's neurons untouched / switched off), ``no_ngram_ban``
                (generation without the n-gram ban), ``plain`` (the settings' rule instead
                of the steering profile).
            reference: real-text NLL per target (:func:`~lape.evaluate.fluency.fluency_reference`)
                for the fluency figures (each output scored by the unmodified model).
            prompt_set: a name for the prompts in the sidecar and the report (e.g. ``builtin:test``).
            out: save here; an evaluation made from the same inputs is returned from it.
        """
        targets, controls = list(targets), list(controls)
        strengths = list(strengths) if strengths else [None]
        if not prompts:
            raise LapeError("no prompts to evaluate: give a prompt file with at least one line")
        if not targets:
            raise LapeError("no target languages to evaluate: give --to LANG ...")
        unknown = [c for c in controls if c not in CONTROLS]
        if unknown:
            raise LapeError(f"unknown steering control {unknown[0]!r}: use any of {', '.join(CONTROLS)}")
        if reference is not None:
            reference.require(targets)
        jobs = self._jobs(targets, source, strengths, controls, list(random_seeds))  # checks everything first
        inputs = {"neurons": self.sets.identity(), "stats": self.stats.identity(), "prompts": list(prompts),
                  "targets": targets, "source": source, "strengths": strengths, "controls": controls,
                  "random_seeds": list(random_seeds), "examples_per_target": examples_per_target,
                  "langid": langid_version(), "accepts": {t: labels_of_language(t) for t in targets},
                  "scripts": {t: script_rule(t) for t in targets},
                  "reference": reference.identity() if reference else None,
                  "profile": self.profile.identity() if self.use_profile and self.profile else None}
        key = artifacts.stage_key(SteeringEval.KIND, model_fingerprint=fingerprint(self.model),
                                  config=self.config.key_dict(), inputs=inputs)
        ev = artifacts.run_stage(SteeringEval, out, key, lambda: self._evaluate(
            prompts, targets, source, jobs, reference, progress, examples_per_target, inputs, prompt_set),
            model=self.model)
        if prompt_set:  # a cached evaluation of the same prompts under another name: renamed in memory only
            ev.meta["prompt_set"] = prompt_set
        return ev

    def _jobs(self, targets: list[str], source: str | None, strengths: list[float | None], controls: list[str],
              seeds: list[int]) -> list[dict[str, Any]]:
        """One job per (condition, target, strength[, seed]), its rule checked."""
        jobs = []
        for t in targets:
            for st in strengths:
                rule = self.rule_for(t)
                if st is not None:
                    rule = rule.replace(strength=float(st))
                variants = [("steered", rule, None)]
                if "plain" in controls and self.use_profile:
                    variants.append(("plain", self.config.rule() if st is None else
                                     self.config.rule().replace(strength=float(st)), None))
                if "source_on" in controls:
                    variants.append(("source_on", rule.replace(source_scale=1.0), None))
                if "source_off" in controls:
                    variants.append(("source_off", rule.replace(source_scale=0.0), None))
                variants += [("random", rule, seed) for seed in (seeds if "random" in controls else [])]
                if "no_ngram_ban" in controls:
                    variants.append(("no_ngram_ban", rule, None))
                for condition, r, seed in variants:
                    self._request(t, source, None, r, seed)
                    jobs.append({"condition": condition, "target": t, "rule": r, "seed": seed})
        return jobs

    def _evaluate(self, prompts: Sequence[str], targets: list[str], source: str | None, jobs: list[dict[str, Any]],
                  reference: FluencyReference | None, progress: bool, examples_per_target: int,
                  inputs: dict[str, Any], prompt_set: str | None) -> SteeringEval:
        n, prompts = len(prompts), list(prompts)
        ban = self.config.no_repeat_ngram_size

        def what(j: dict[str, Any]) -> tuple:  # jobs that generate the same thing share the outputs
            return (j["target"], j["rule"], j["seed"], 0 if j["condition"] == "no_ngram_ban" else ban)

        unique = list(dict.fromkeys(what(j) for j in jobs))
        outputs: dict[tuple, list[Generation]] = {}
        plain: dict[int, list[Generation]] = {}
        for decoding in dict.fromkeys(u[3] for u in unique):
            group = [u for u in unique if u[3] == decoding]
            steerer = self if decoding == ban else self.with_config(no_repeat_ngram_size=decoding)
            with_plain = [None, *group]  # the unsteered outputs of this decoding, in the same call
            gens = steerer.generate(prompts * len(with_plain),
                                    target=[None if u is None else u[0] for u in with_plain for _ in prompts],
                                    source=source, rule=[None if u is None else u[1] for u in with_plain for _ in prompts],
                                    random_seed=[None if u is None else u[2] for u in with_plain for _ in prompts],
                                    progress=progress)
            plain[decoding] = gens[:n]
            for k, u in enumerate(group, start=1):
                outputs[u] = gens[k * n:(k + 1) * n]
        # fluency is scored for every output but the random control's (its outputs stay in the source language)
        scored = self._score([*plain.values(), *(g for u, g in outputs.items() if u[2] is None)], reference, progress)
        rows, examples = [], []
        for j in jobs:
            gens = outputs[what(j)]
            base = plain[what(j)[3]]
            t = j["target"]
            langs = Counter(g.label or g.language or "?" for g in gens)  # raw labels: arz stays arz
            row = {"condition": j["condition"], "seed": j["seed"], "target": t, "strength": j["rule"].strength,
                   "rule": j["rule"].describe(), "prompts": n,
                   "steered_success": mean_of(g.success(t) for g in gens),
                   "unsteered_success": mean_of(g.success(t) for g in base),
                   "steered_target_language": mean_of(g.language == t for g in gens),
                   # identified as the target but not in its script: what the script check removed
                   "steered_script_fail": mean_of(g.language == t and not in_script(g.text, t) for g in gens),
                   "steered_success_own_label": mean_of(g.success(t) and g.label is None for g in gens),
                   "steered_distinct_2": mean_of(g.distinct_2 for g in gens),
                   "unsteered_distinct_2": mean_of(g.distinct_2 for g in base),
                   "steered_repetition": mean_of(1 - g.distinct_2 for g in gens),
                   "steered_degenerate": mean_of(g.distinct_2 < 0.5 or g.max_token_share > 1 / 3 for g in gens),
                   "non_letter": median_of(non_letter_share(g.text) for g in gens),
                   "identified": dict(langs.most_common())}
            if reference is not None and j["seed"] is None:
                row.update({"fluency_ratio": median_of(reference.ratio(t, scored[id(g)]) for g in gens),
                            "fluent": mean_of(reference.fluent(t, scored[id(g)], g.text) for g in gens),
                            "fluent_success": mean_of(g.success(t) and reference.fluent(t, scored[id(g)], g.text)
                                                    for g in gens)})
            rows.append(row)
            if j["condition"] == "steered":
                for p, g0, g in list(zip(prompts, base, gens))[:examples_per_target]:
                    examples.append({"target": t, "strength": j["rule"].strength, "prompt": p,
                                     "unsteered": g0.text, "unsteered_language": g0.language,
                                     "steered": g.text, "steered_language": g.language,
                                     "success": g.success(t)})
        meta = artifacts.model_sidecar(
            SteeringEval.KIND, self.model, self.space, languages=targets, config=self.config.to_dict(),
            inputs={**inputs, "prompts": len(prompts)}, source=source, targets=targets,
            strengths=sorted({j["rule"].strength for j in jobs}), prompts=len(prompts), langid=langid_version(),
            profile={t: self.rule_for(t).to_dict() for t in targets} if self.use_profile and self.profile else None,
            reference=reference.languages if reference else None,
            neurons={"method": self.sets.meta.get("method"), "counts": self.sets.counts()},
            **({"prompt_set": prompt_set} if prompt_set else {}))
        return SteeringEval(rows, examples, meta)

    def with_config(self, **changes: Any) -> Steerer:
        """A steerer sharing this one's model, sets, stats and profile, with some settings changed."""
        other = copy.copy(self)
        other.config = self.config.replace(**changes)
        return other

    def _score(self, groups: Iterable[list[Generation]], reference: FluencyReference | None,
               progress: bool) -> dict[int, float]:
        """The unmodified model's mean NLL of each generation's tokens, by ``id(generation)``."""
        if reference is None:
            return {}
        gens = [g for group in groups for g in group]
        nlls = text_nll(self.model, [g.tokens for g in gens], getattr(self.tokenizer, "bos_token_id", None))
        return {id(g): v for g, v in zip(gens, nlls)}


def describe_edits(edits: Sequence[Any]) -> str:
    """``"48 neurons in 3 layers (L0 12, L7 2, L17 34)"``: which activations a list of edits touches."""
    touched = {(e.layer, int(i)) for e in edits for i in e.index.tolist()}
    per_layer = Counter(layer for layer, _ in touched)
    if not per_layer:
        return "no neurons"
    return (f"{len(touched)} neurons in {len(per_layer)} layers ("
            + ", ".join(f"L{layer} {n}" for layer, n in sorted(per_layer.items())) + ")")
