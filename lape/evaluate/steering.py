"""Steer the output language by switching neurons during ``generate()`` (Tang et al. §5).

A :class:`Steerer` holds a model, its neuron sets and recorded stats. ``steer(prompt, to="fr")``
generates the unsteered and the steered continuation (by default: the source language's neurons
deactivated, the target's activated with their recorded value) and identifies the language of
each with ``py3langid`` (offline). :func:`repl` is the interactive loop; ``evaluate`` scores a
prompt set.

A steered output counts as a **success** when ``py3langid`` identifies the target language on at
least ``min_chars`` characters **and** the output is not degenerate: distinct-2 (distinct token
bigrams / all bigrams) >= 0.5 and no single token makes up more than a third of it. A run of
"肉肉肉肉" or of blank characters fails whatever the identifier says.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..activations import ActivationStats
from ..config import StageConfig, option
from ..errors import LapeError
from ..intervene import VALUE_RULES, batch_edits, check_layers, intervene
from ..langid import identify_language, langid_version
from ..masks import NeuronSets
from ..models import fingerprint, input_device
from ..space import NeuronSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SteerConfig(StageConfig):
    """Settings of steering.

    Defaults were chosen on the built-in model's ``parallel`` prompts (UDHR openings) and are
    reported on ``heldout`` prompts (README, "Steering"). Two findings set them:

    * ``no_repeat_ngram_size=4``: greedy decoding of a 270M model loops. Even *unsteered*
      continuations of native Chinese prompts pass the success rule only 75% of the time with
      repetition penalty 1.1 alone (Japanese 81%, Arabic 88%), a ceiling no neuron setting can
      beat; forbidding verbatim 4-gram repeats lifts that ceiling to 94-100% in every language
      while natural text keeps its distinct-2 (0.96-0.99). It applies to unsteered and steered
      generation alike.
    * ``strength=1.5`` with ``value="firing_mean"`` on all layers: strength 1 leaves Italian and
      Portuguese in English; 2 turns Russian and Arabic into markup; the mean over all tokens
      (``value="mean"``) needs 2-3x the strength and degenerates sooner; the top half of the
      layers alone barely switches (the bottom layers matter).
    """

    max_new_tokens: int = option(32, min=1, max=4096)  # continuation length: long enough for language ID
    strength: float = option(1.5, min=0.0, max=100.0)  # multiplies the activation value of the target's neurons
    value: str = option("firing_mean", choices=VALUE_RULES)  # firing_mean: mean activation where the neuron
    # fired; mean: over all tokens
    layers: tuple[int, ...] | None = option(None, min=0)  # restrict edits to these layers (None: all)
    repetition_penalty: float = option(1.1, gt=0.0, max=10.0)  # as in Tang et al.'s generation.py
    no_repeat_ngram_size: int = option(4, min=0, max=64)  # forbid repeating any n-gram of this size (0: off)
    min_chars: int = option(20, min=1)  # shortest output language ID is trusted on
    batch_size: int = option(96, min=1, max=4096, key=False)  # prompts generated together (each with its own
    # target): a decoding step reads the whole 262k x 640 LM head, so wide batches cost little extra


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

    def success(self, target: str) -> bool:
        """Target language identified and not degenerate (see the module docstring)."""
        return (self.language == target and self.distinct_2 >= 0.5 and self.max_token_share <= 1 / 3)


@dataclass
class SteerOutput:
    prompt: str
    target: str
    source: str | None
    unsteered: Generation
    steered: Generation

    def format(self) -> str:
        def show(label: str, g: Generation) -> str:
            ok = "ok" if g.success(self.target) else "--"
            return (f"{label:<10} [{g.language or '?'}] {ok} d2={g.distinct_2:.2f}\n"
                    f"           {g.text.strip()!r}")
        src = self.source or "none"
        return (f"prompt     {self.prompt!r}\n{show('unsteered', self.unsteered)}\n"
                f"{show(f'{src}->{self.target}', self.steered)}")


@dataclass
class SteeringEval(artifacts.Artifact):
    """Steering over a prompt set, per target language and strength (``rows``), with examples."""

    rows: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "steering"

    def payload(self) -> dict[str, Any]:
        return {"rows": self.rows, "examples": self.examples}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"summary": self.rows, "examples": self.examples}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> SteeringEval:
        return cls(list(payload["rows"]), list(payload["examples"]), meta)

    def validate(self) -> None:
        for r in self.rows:
            for k in ("steered_success", "unsteered_success"):
                v = r.get(k)
                if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise LapeError(f"steering row {r.get('target')} has {k} {v!r}, not a share in [0, 1]: the "
                                    "artifact was edited or damaged; re-run lape steer-eval")

    def summary_lines(self) -> list[str]:
        return [f"{r['target']} x{r['strength']:g}: steered success {r['steered_success']:.0%} "
                f"(unsteered {r['unsteered_success']:.0%}), distinct-2 {r['steered_distinct_2']:.2f}"
                for r in self.rows]


class Steerer:
    """Generate with and without neuron steering.

    Example:
        >>> s = Steerer(model, tok, sets, stats)
        >>> print(s.steer("The weather today is", to="fr").format())
    """

    def __init__(self, model: nn.Module, tokenizer: Any, sets: NeuronSets, stats: ActivationStats,
                 config: SteerConfig = SteerConfig()) -> None:
        self.model, self.tokenizer, self.sets, self.stats, self.config = model, tokenizer, sets, stats, config
        self.space = NeuronSpace.of(model)
        sets.check_model(model, self.space)
        check_layers(config.layers or (), self.space.num_layers)  # before any generation
        stats.check_model(model)
        if stats.shape != sets.shape:
            raise LapeError(f"the stats ({stats.shape[0]} x {stats.shape[1]}) do not match the neuron sets "
                            f"({sets.shape[0]} x {sets.shape[1]}): use stats and neurons of one model")

    def generate(self, prompts: Sequence[str], target: str | Sequence[str | None] | None = None,
                 source: str | None = None, strength: float | Sequence[float] | None = None,
                 progress: bool = False) -> list[Generation]:
        """Greedy continuations of ``prompts``, steered towards ``target`` when given.

        ``target`` and ``strength`` are one value for every prompt or one per prompt (a ``None``
        target leaves that prompt unsteered); prompts with different targets share a batch.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        n = len(prompts)
        targets = list(target) if isinstance(target, (list, tuple)) else [target] * n
        strengths = list(strength) if isinstance(strength, (list, tuple)) else [strength] * n
        if len(targets) != n or len(strengths) != n:
            raise LapeError(f"{n} prompts but {len(targets)} targets and {len(strengths)} strengths: give one "
                            "value or one per prompt")
        requests = [self._request(t, source, cfg.strength if s is None else s) for t, s in zip(targets, strengths)]
        results: list[Generation] = []
        for start in tqdm(range(0, n, cfg.batch_size), desc="generate", unit="batch", disable=not progress):
            chunk = requests[start:start + cfg.batch_size]
            edits = batch_edits(self.sets, chunk, stats=self.stats, value=cfg.value, layers=cfg.layers)
            with intervene(self.model, edits=edits, space=self.space, check_model=False):
                results += self._generate(list(prompts[start:start + cfg.batch_size]))
        return results

    def _request(self, target: str | None, source: str | None, strength: float) -> dict[str, Any]:
        """The :func:`batch_edits` request of one prompt: deactivate the source, activate the target."""
        if target is None:
            return {}
        source = source_language(source)
        check_languages(self.sets, [target] if source != target else [], source)  # to the source: nothing to switch off
        if not isinstance(strength, (int, float)) or isinstance(strength, bool):
            raise LapeError(f"steering strength {strength!r} is not a number: give e.g. 1.5")
        self.config.replace(strength=float(strength))  # the same bounds as --strength
        deactivate = [source] if source and source != target else []
        return {"deactivate": deactivate, "activate": [target], "strength": strength}

    def _generate(self, prompts: list[str]) -> list[Generation]:
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        try:
            enc = tok(prompts, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old_side
        device = input_device(self.model)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                max_new_tokens=self.config.max_new_tokens, do_sample=False,
                repetition_penalty=self.config.repetition_penalty, pad_token_id=tok.pad_token_id,
                **({"no_repeat_ngram_size": self.config.no_repeat_ngram_size}
                   if self.config.no_repeat_ngram_size else {}))
        new = out[:, enc.input_ids.shape[1]:].tolist()
        gens = []
        for ids in new:
            ids = [t for t in ids if t != tok.pad_token_id]
            if tok.eos_token_id in ids:
                ids = ids[:ids.index(tok.eos_token_id)]
            text = tok.decode(ids, skip_special_tokens=True)
            gens.append(Generation(text, ids, identify_language(text, self.config.min_chars),
                                   distinct_n(ids, 2), max_token_share(ids)))
        return gens

    def steer(self, prompt: str, to: str, source: str | None = "en", strength: float | None = None) -> SteerOutput:
        """The unsteered and the steered continuation of one prompt."""
        check_languages(self.sets, [to], source)
        self._request(to, source, self.config.strength if strength is None else strength)  # checks first
        plain = self.generate([prompt])[0]
        steered = self.generate([prompt], target=to, source=source, strength=strength)[0]
        return SteerOutput(prompt, to, source, plain, steered)

    def evaluate(self, prompts: Sequence[str], targets: Iterable[str], source: str | None = "en",
                 strengths: Sequence[float] | None = None, progress: bool = True,
                 examples_per_target: int = 3, *, out: str | Path | None = None) -> SteeringEval:
        """Success rate, distinct-2, repetition and identified languages per target and strength.

        With ``out=``, the evaluation is saved there, and one made from the same model, neuron
        sets, stats, prompts and settings is returned without generating again.
        """
        targets = list(targets)
        strengths = list(strengths or [self.config.strength])
        if not prompts:
            raise LapeError("no prompts to evaluate: give a prompt file with at least one line")
        if not targets:
            raise LapeError("no target languages to evaluate: give --to LANG ...")
        for t in targets:
            for st in strengths:
                self._request(t, source, st)  # checks every target, the source and the strengths first
        inputs = {"neurons": self.sets.identity(), "stats": self.stats.identity(), "prompts": list(prompts),
                  "targets": targets, "source": source, "strengths": strengths,
                  "examples_per_target": examples_per_target, "langid": langid_version()}
        key = artifacts.stage_key(SteeringEval.KIND, model_fingerprint=fingerprint(self.model),
                                  config=self.config.key_dict(), inputs=inputs)
        return artifacts.run_stage(SteeringEval, out, key, lambda: self._evaluate(
            prompts, targets, source, strengths, progress, examples_per_target, inputs), model=self.model)

    def _evaluate(self, prompts: Sequence[str], targets: list[str], source: str | None, strengths: list[float],
                  progress: bool, examples_per_target: int, inputs: dict[str, Any]) -> SteeringEval:
        # every (target, strength) and the unsteered baseline in one batched generate() call
        jobs = [(None, None)] + [(t, st) for t in targets for st in strengths]
        n = len(prompts)
        gens_all = self.generate(list(prompts) * len(jobs), target=[t for t, _ in jobs for _ in range(n)],
                                 source=source, strength=[st for _, st in jobs for _ in range(n)],
                                 progress=progress)
        plain = gens_all[:n]
        rows, examples = [], []
        for j, (target, strength) in enumerate(jobs[1:], start=1):
            gens = gens_all[j * n:(j + 1) * n]
            unsteered_success = _mean(g.success(target) for g in plain)
            langs = Counter(g.language or "?" for g in gens)
            rows.append({
                "target": target, "strength": strength, "prompts": n,
                "steered_success": _mean(g.success(target) for g in gens),
                "unsteered_success": unsteered_success,
                "steered_target_language": _mean(g.language == target for g in gens),
                "steered_distinct_2": _mean(g.distinct_2 for g in gens),
                "unsteered_distinct_2": _mean(g.distinct_2 for g in plain),
                "steered_repetition": _mean(1 - g.distinct_2 for g in gens),
                "steered_degenerate": _mean(g.distinct_2 < 0.5 or g.max_token_share > 1 / 3 for g in gens),
                "identified": dict(langs.most_common()),
            })
            for p, g0, g in list(zip(prompts, plain, gens))[:examples_per_target]:
                examples.append({"target": target, "strength": strength, "prompt": p,
                                 "unsteered": g0.text, "unsteered_language": g0.language,
                                 "steered": g.text, "steered_language": g.language,
                                 "success": g.success(target)})
        meta = artifacts.model_sidecar(
            SteeringEval.KIND, self.model, self.space, languages=targets, config=self.config.to_dict(),
            inputs={**inputs, "prompts": len(prompts)}, source=source, targets=targets, strengths=strengths,
            prompts=len(prompts), langid=langid_version(),
            neurons={"method": self.sets.meta.get("method"), "counts": self.sets.counts()})
        return SteeringEval(rows, examples, meta)


def _mean(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan


_HELP = """commands:
  :to LANG        switch the target language (e.g. :to ja)
  :from LANG      switch the source language whose neurons are switched off (:from none keeps them)
  :strength X     scale the activation value (e.g. :strength 2)
  :off            show only the unsteered output;  :on  steer again
  :langs          list the languages
  :help           this text;  :quit  leave
anything else is a prompt."""


def repl(steerer: Steerer, target: str | None = None, source: str | None = "en",
         input_fn: Callable[[str], str] = input, output_fn: Callable[[str], None] = print) -> int:
    """The interactive steering loop of ``lape steer --interactive``.

    Reads prompts and ``:commands`` from ``input_fn`` until ``:quit`` or end of input.
    """
    labels = steerer.sets.labels
    check_languages(steerer.sets, [target] if target is not None else [], None)
    if source not in labels:  # e.g. no English set: steer by activation only
        source = None
    default_target = next((lab for lab in labels if lab != source), labels[0])
    state: dict[str, Any] = {"to": target or default_target, "from": source,
                             "strength": steerer.config.strength, "on": True}
    output_fn(f"lape steering REPL: target {state['to']}, source {state['from']}. :help for commands.")
    while True:
        try:
            line = input_fn(f"[{state['to'] if state['on'] else 'off'} x{state['strength']:g}]> ").strip()
        except EOFError:
            return 0
        if not line:
            continue
        if line.startswith(":"):
            cmd, _, arg = line[1:].partition(" ")
            arg = arg.strip()
            if cmd in ("quit", "q", "exit"):
                return 0
            if cmd == "help":
                output_fn(_HELP)
            elif cmd == "langs":
                output_fn(" ".join(steerer.sets.labels))
            elif cmd == "to" and arg in steerer.sets.labels:
                state["to"], state["on"] = arg, True
                output_fn(f"target -> {arg}")
            elif cmd == "from" and (arg in steerer.sets.labels or source_language(arg) is None):
                state["from"] = source_language(arg)
                output_fn(f"source -> {arg}")
            elif cmd == "strength":
                try:
                    state["strength"] = float(arg)
                    output_fn(f"strength -> {state['strength']:g}")
                except ValueError:
                    output_fn(f"not a number: {arg!r} (e.g. :strength 2)")
            elif cmd in ("off", "on"):
                state["on"] = cmd == "on"
                output_fn(f"steering {cmd}")
            elif cmd in ("to", "from"):
                output_fn(f"unknown language {arg!r}: choose one of {' '.join(steerer.sets.labels)}")
            else:
                output_fn(f"unknown command :{cmd} (:help lists them)")
            continue
        if state["on"]:
            output_fn(steerer.steer(line, to=state["to"], source=state["from"],
                                    strength=state["strength"]).format())
        else:
            g = steerer.generate([line])[0]
            output_fn(f"unsteered  [{g.language or '?'}] {g.text.strip()!r}")
