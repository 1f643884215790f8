"""Steering profiles: a :class:`SteeringRule` per target language, chosen on development prompts.

:func:`calibrate` searches, per target language, for the rule whose steered outputs are most
often both a **success** (target language identified, in its script, not degenerate) and **fluent** (as
predictable to the unmodified model as 90% of real text windows of that language, mostly
letters; :mod:`lape.evaluate.fluency`). The search is coordinate-wise, every target at once:

1. every ``mode`` x ``strength`` candidate (source and layers as in the base settings);
2. from each target's best so far, every layer window;
3. from there, exclusive neurons (when asked);
4. from there, every source scale;
5. for the targets still below ``refine_below``: every layer window with each of their
   ``refine_top`` best mode x strength candidates (a window can rescue a rule that lost
   stage 1, which the coordinate search alone would never try);
6. for the targets still below ``refine_below`` after that: a local search around their best
   rule, every ``polish_strengths`` x ``polish_windows`` (default: ``layer_windows``), keeping
   its mode and source scale;

a change is kept only when it scores strictly better. Ties go to the earlier candidate, so
list the plainer settings first. Every candidate's dev scores are kept in the profile, and a
later calibration on the same prompts, model, sets, stats, reference and settings reuses them
(only candidates it has not scored yet are generated).

The profile is saved **beside the neuron sets** (``RUN/neurons/steering_profile.json``), where
``lape steer`` and ``lape steer-eval`` pick it up; it is refused for another model or other
neuron sets. Choose on ``builtin:dev`` and report on ``builtin:test``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..errors import LapeError
from ..files import atomic_write_text
from ..fingerprint import fingerprint
from ..langid import labels_of_language, langid_version, script_rule
from ..masks import NeuronSets
from .steer_rule import MODES, SteeringRule

if TYPE_CHECKING:
    from .fluency import FluencyReference
    from .steering import Steerer

logger = logging.getLogger(__name__)


@dataclass
class SteeringProfile(artifacts.Artifact):
    """Per target language, the rule :func:`calibrate` chose, with the dev scores behind it."""

    rules: dict[str, SteeringRule]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "steering_profile"
    DESCRIPTION: ClassVar[str] = "steering profile"

    def payload(self) -> Any:
        return {"rules": {lang: r.to_dict() for lang, r in self.rules.items()}, "candidates": self.candidates}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"profile": [{"target": lang, "rule": r.describe(), **r.to_dict()} for lang, r in self.rules.items()],
                "candidates": self.candidates}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> SteeringProfile:
        if not isinstance(payload, dict) or not isinstance(payload.get("rules"), dict):
            raise LapeError("the steering profile has no rules: the artifact was edited or damaged; "
                            "re-run lape steer-calibrate")
        rules = {lang: SteeringRule.from_dict(r) for lang, r in payload["rules"].items()}
        return cls(rules, list(payload.get("candidates") or []), meta)

    def check(self, model: nn.Module, sets: NeuronSets) -> None:
        """Refuse a profile calibrated on another model or other neuron sets."""
        self.check_model(model)
        made_for = self.meta.get("neurons")
        if made_for and made_for != sets.identity():
            raise LapeError("the steering profile was calibrated for other neuron sets: re-run lape steer-calibrate "
                            "on these sets, or pass --no-profile")


_SCORES = ("success", "fluent", "fluent_success", "fluency_ratio", "non_letter")


def _scoring(target: str) -> dict[str, Any]:
    """What decides whether an output counts for ``target`` beyond the shared inputs: the
    identifier's version, the raw labels counted as the target and the target's script check
    (stored with each candidate)."""
    return {"langid": langid_version(), "accepts": labels_of_language(target), "script": script_rule(target)}


def _scored(out: str | Path | None, scores_key: str) -> dict[tuple[str, SteeringRule], dict[str, Any]]:
    """The candidates a profile in ``out`` scored on the same inputs (``scores_key``) and the same
    success rule for their target (:func:`_scoring`), by (target, rule): a new search reuses them
    instead of generating again."""
    if out is None:
        return {}
    candidates: list[dict[str, Any]] = []
    if artifacts.exists(out, SteeringProfile.KIND):
        try:
            old = SteeringProfile.load(out)
            if old.meta.get("scores_key") == scores_key:
                candidates += old.candidates
        except LapeError:
            pass
    partial = _partial_path(out)
    if partial.is_file():  # an interrupted search: the candidates it had scored
        try:
            saved = json.loads(partial.read_text(encoding="utf-8"))
            if saved.get("scores_key") == scores_key:
                candidates += saved["candidates"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    fields = [f for f in SteeringRule.__dataclass_fields__]
    return {(c["target"], SteeringRule.from_dict({f: c[f] for f in fields})): c for c in candidates
            if all(c.get(k) == v for k, v in _scoring(c["target"]).items())}


def _partial_path(out: str | Path) -> Path:
    return Path(out) / f".{SteeringProfile.KIND}.scored.json"


def _checkpoint(out: str | Path | None, scores_key: str, known: dict[Any, dict[str, Any]]) -> None:
    """Keep every candidate scored so far (atomically), so that an interrupted search resumes."""
    if out is not None:
        atomic_write_text(_partial_path(out), json.dumps({"scores_key": scores_key,
                                                          "candidates": list(known.values())}))


def find_profile(neurons: str | Path) -> SteeringProfile | None:
    """The profile saved beside the neuron sets in folder ``neurons``, if there is one."""
    return SteeringProfile.load(neurons) if artifacts.exists(neurons, SteeringProfile.KIND) else None


def _windows(spec: str, num_layers: int) -> tuple[int, ...] | None:
    """``"all"`` -> None; ``"lo-hi"`` -> that inclusive range; ``"lower"``/``"upper"`` halves;
    ``"skip:k"`` -> all but the first k layers."""
    if spec == "all":
        return None
    if spec == "lower":
        return tuple(range(num_layers // 2))
    if spec == "upper":
        return tuple(range(num_layers // 2, num_layers))
    if spec.startswith("skip:"):
        return tuple(range(int(spec[5:]), num_layers))
    lo, _, hi = spec.partition("-")
    try:
        window = tuple(range(int(lo), int(hi) + 1))
    except ValueError:
        raise LapeError(f"layer window {spec!r} is not all, lower, upper, skip:K or LO-HI (e.g. 4-17)") from None
    if not window or window[-1] >= num_layers:
        raise LapeError(f"layer window {spec!r} is outside layers 0..{num_layers - 1}")
    return window


@dataclass(frozen=True)
class CalibrateConfig(StageConfig):
    """The candidates :func:`calibrate` tries (module docstring)."""

    modes: tuple[str, ...] = option(("add", "replace"), choices=MODES)  # edit rules to try
    strengths: tuple[float, ...] = option((1.0, 1.5, 2.0), gt=0.0, max=100.0)  # strengths to try with each mode
    layer_windows: tuple[str, ...] = ("all",)  # all, lower, upper, skip:K or LO-HI; tried after the strength
    source_scales: tuple[float, ...] = option((), min=0.0, max=1.0)  # factors on the source's neurons to try last
    try_exclusive: bool = False  # also try the target's exclusive neurons (after the windows)
    refine_below: float = option(0.0, min=0.0, max=1.0)  # targets whose best fluent success is below this ...
    refine_top: int = option(3, min=1, max=20)  # ... also try every layer window with their best this many
    # mode x strength candidates (a coordinate search keeps only the best one before the windows)
    polish_strengths: tuple[float, ...] = option((), gt=0.0, max=100.0)  # then, for targets still weak, these
    polish_windows: tuple[str, ...] = ()  # strengths x these windows (default: layer_windows) around their best


def calibrate(steerer: Steerer, prompts: Sequence[str], targets: Iterable[str], reference: FluencyReference,
              source: str | None = "en", config: CalibrateConfig = CalibrateConfig(), *, progress: bool = True,
              out: str | Path | None = None) -> SteeringProfile:
    """Choose each target's rule on development ``prompts`` (module docstring).

    Args:
        steerer: the model, neuron sets and stats; its settings give the base rule.
        prompts: development prompts (``builtin:dev``), never the ones results are reported on.
        targets: the target languages.
        reference: real-text NLL per target (:func:`~lape.evaluate.fluency.fluency_reference`).
        source: the prompts' language.
        config: the candidates.
        out: the neuron sets' folder (the profile is saved beside them); a profile made from
            the same inputs is returned from it.
    """
    targets = list(targets)
    reference.require(targets)
    base = steerer.config.rule()
    windows = [_windows(w, steerer.space.num_layers) for w in config.layer_windows]
    polish_windows = {spec: _windows(spec, steerer.space.num_layers)
                      for spec in config.polish_windows or config.layer_windows}
    inputs = {"neurons": steerer.sets.identity(), "stats": steerer.stats.identity(), "prompts": list(prompts),
              "targets": targets, "source": source, "reference": reference.identity(),
              "base": base.to_dict(), "steer": steerer.config.key_dict(),
              "scoring": {t: _scoring(t) for t in targets}}
    key = artifacts.stage_key(SteeringProfile.KIND, model_fingerprint=fingerprint(steerer.model),
                              config=config.key_dict(), inputs=inputs)
    scores_key = artifacts.stage_key("steering_scores", model_fingerprint=fingerprint(steerer.model), config={},
                                     inputs={k: v for k, v in inputs.items() if k not in ("targets", "scoring")})

    def compute() -> SteeringProfile:
        known = _scored(out, scores_key)  # (target, rule) -> candidate scored on these very inputs
        candidates: list[dict[str, Any]] = []
        best: dict[str, tuple[tuple[float, float, float], SteeringRule]] = {}
        first: dict[str, list[tuple[tuple[float, float, float], SteeringRule]]] = {}

        def trial(stage: str, rules: dict[str, SteeringRule]) -> None:
            todo = [t for t in rules if (t, rules[t]) not in known]
            rows = {}
            if todo:
                trial_steerer = steerer.with_config()
                trial_steerer.profile, trial_steerer.use_profile = SteeringProfile(rules), True
                ev = trial_steerer.evaluate(prompts, todo, source=source, reference=reference, progress=progress,
                                            examples_per_target=0)
                rows = {r["target"]: {"success": r["steered_success"], "fluent": r["fluent"],
                                      "fluent_success": r["fluent_success"], "fluency_ratio": r["fluency_ratio"],
                                      "non_letter": r["non_letter"]} for r in ev.rows}
            for t, rule in rules.items():
                scores = rows.get(t) or {k: known[(t, rule)][k] for k in _SCORES}
                candidate = {"stage": stage, "target": t, "rule": rule.describe(), **rule.to_dict(), **scores,
                             **_scoring(t)}
                candidates.append(candidate)
                known[(t, rule)] = candidate
                score = (scores["fluent_success"], scores["success"], -scores["fluency_ratio"])
                if stage.startswith(tuple(config.modes)):
                    first.setdefault(t, []).append((score, rule))
                if t not in best or score > best[t][0]:
                    best[t] = (score, rule)
            if todo:
                _checkpoint(out, scores_key, known)
            logger.info("[calibrate] %s: mean fluent success %.0f%% (%d of %d targets generated)", stage,
                        100 * sum(known[(t, r)]["fluent_success"] for t, r in rules.items()) / len(rules),
                        len(todo), len(rules))

        for mode in config.modes:
            for strength in config.strengths:
                rule = base.replace(mode=mode, strength=strength)
                trial(f"{mode} x{strength:g}", dict.fromkeys(targets, rule))
        for spec, window in zip(config.layer_windows, windows):
            if window != base.layers:
                trial(f"layers {spec}", {t: best[t][1].replace(layers=window) for t in targets})
        if config.try_exclusive:
            trial("exclusive neurons", {t: best[t][1].replace(exclusive=not best[t][1].exclusive) for t in targets})
        for scale in config.source_scales:
            if scale != base.source_scale:
                trial(f"source x{scale:g}", {t: best[t][1].replace(source_scale=scale) for t in targets})
        weak = [t for t in targets if best[t][0][0] < config.refine_below]
        ranked = {t: [r for _, r in sorted(first.get(t, []), key=lambda sr: sr[0], reverse=True)][:config.refine_top]
                  for t in weak}
        for k in range(config.refine_top):
            for spec, window in zip(config.layer_windows, windows):
                rules = {t: ranked[t][k].replace(layers=window) for t in weak if k < len(ranked[t])}
                if rules:
                    trial(f"refine: candidate {k + 1}, layers {spec}", rules)
        weak = [t for t in weak if best[t][0][0] < config.refine_below]
        centre = {t: best[t][1] for t in weak}  # fixed, so the search does not drift while it runs
        if weak and config.polish_strengths:
            for strength in config.polish_strengths:
                for spec, window in polish_windows.items():
                    trial(f"polish: x{strength:g}, layers {spec}",
                          {t: centre[t].replace(strength=strength, layers=window) for t in weak})
        rules = {t: best[t][1] for t in targets}
        meta = artifacts.model_sidecar(SteeringProfile.KIND, steerer.model, steerer.space, languages=targets,
                                       config=config.to_dict(), inputs={**inputs, "prompts": len(prompts)},
                                       neurons=steerer.sets.identity(), source=source, scores_key=scores_key,
                                       dev_scores={t: dict(zip(("fluent_success", "success", "neg_ratio"), best[t][0]))
                                                   for t in targets})
        return SteeringProfile(rules, candidates, meta)

    profile = artifacts.run_stage(SteeringProfile, out, key, compute, model=steerer.model)
    if out is not None:  # the profile holds every scored candidate now
        _partial_path(out).unlink(missing_ok=True)
    return profile
