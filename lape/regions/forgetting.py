"""The result of frozen further pre-training (:class:`RegionTrain`, kind ``region_train``):
per setting and seed the held-out NLL of every language before and after training, the losses,
and the verdict (forgetting, or perturbation damage where the trained language's own NLL did not
fall). :mod:`lape.regions.train` runs the training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .. import artifacts
from ..errors import LapeError
from ..intervals import Interval, bootstrap

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

NONE = "none"  # the setting that freezes nothing
MAGNITUDE = "magnitude"  # the setting that freezes the largest |theta| entries (as many as the core)
MAGNITUDE_RATE = 0.01  # the magnitude control's share of each tensor when there is no core region (paper: 1%)
METHOD = "frozen further pre-training (Zhang et al. 2024, step 6)"

CONTROLS = ("core", "random", MAGNITUDE)  # what the verdict compares
RESAMPLES = 2000  # bootstrap resamples of every interval (seed 0)
DAMAGE = "perturbation damage, not forgetting"
AGREES = "the direction agrees with the paper"


# --------------------------------------------------------------------------------------------
# The result


def _pooled_change(rows: np.ndarray) -> float:
    """``rows [windows, 1 + seeds]`` (tokens, then each seed's summed NLL change): the change per
    token averaged over the seeds, ``sum(changes) / seeds / sum(tokens)``."""
    tokens = rows[:, 0].sum()
    return float(rows[:, 1:].sum() / (rows.shape[1] - 1) / tokens) if tokens > 0 else math.nan


@dataclass
class RegionTrain(artifacts.Artifact):
    """Held-out NLL per window before and after further pre-training, per freezing setting and seed.

    Attributes:
        settings: ``"none"``, ``"magnitude"`` or the frozen region's label, in run order.
        languages: evaluated languages (column order).
        train_language: the language trained on.
        seeds: the training-order seeds, one run each per setting.
        window_tokens: ``{language: [windows]}`` predicted tokens per held-out window (int64).
        before: ``{language: [windows]}`` summed NLL (nats) of each window, original model (float64).
        after: ``{language: [settings, seeds, windows]}`` summed NLL after each run (float64).
        seed_losses: ``[settings, seeds, steps]`` training loss (nats/token) of each step's batch,
            before its optimizer step.
        frozen_params: per setting, the number of frozen parameter entries.
        meta: the sidecar (config, learning rate per step, seconds per step, regions).

    Example:
        >>> res = RegionTrain.load("runs/demo/forgetting")
        >>> res.change("core", res.others())   # Interval: the other languages' mean NLL change
        >>> res.verdict()
    """

    settings: list[str]
    languages: list[str]
    train_language: str
    seeds: list[int]
    window_tokens: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    seed_losses: torch.Tensor
    frozen_params: list[int]
    meta: dict[str, Any] = field(default_factory=dict)
    _intervals: dict[tuple, Interval] = field(default_factory=dict, init=False, repr=False, compare=False)

    KIND: ClassVar[str] = "region_train"
    DESCRIPTION: ClassVar[str] = "forgetting experiment"

    # numbers ----------------------------------------------------------------------------------
    @property
    def tokens(self) -> dict[str, int]:
        """Evaluated tokens per language."""
        return {lang: int(self.window_tokens[lang].sum()) for lang in self.languages}

    @property
    def before_nll(self) -> list[float]:
        """``[languages]`` nats/token of the original model."""
        return [self._per_token(float(self.before[lang].sum()), lang) for lang in self.languages]

    @property
    def after_nll(self) -> list[list[float]]:
        """``[settings][languages]`` nats/token after training, averaged over the seeds."""
        return [[self._per_token(float(self.after[lang][s].sum()) / len(self.seeds), lang) for lang in self.languages]
                for s in range(len(self.settings))]

    @property
    def losses(self) -> list[list[float]]:
        """``[settings][steps]`` training loss per step, averaged over the seeds."""
        return self.seed_losses.mean(1).tolist()

    def _per_token(self, nats: float, lang: str) -> float:
        n = int(self.window_tokens[lang].sum())
        return nats / n if n else math.nan

    def delta_nll(self) -> list[list[float]]:
        """``[settings][languages]``: NLL after minus before (positive: forgotten), seed mean."""
        return [[a - b for a, b in zip(row, self.before_nll)] for row in self.after_nll]

    def others(self) -> list[str]:
        """The evaluated languages that were not trained on."""
        return [lang for lang in self.languages if lang != self.train_language]

    def _rows(self, setting: str, languages: Sequence[str]) -> np.ndarray:
        """``[windows, 1 + seeds]``: each window's tokens, then its summed NLL change per seed."""
        s = self.settings.index(setting)
        parts = [np.column_stack([self.window_tokens[lang].double().numpy(),
                                  (self.after[lang][s] - self.before[lang]).double().numpy().T])
                 for lang in languages]
        return np.concatenate(parts) if parts else np.zeros((0, 1 + len(self.seeds)))

    def change(self, setting: str, languages: Sequence[str] | str) -> Interval:
        """The NLL change (nats/token, seed mean, pooled over ``languages``' windows) with its
        95% bootstrap interval over windows (module docstring); NaN without windows."""
        langs = [languages] if isinstance(languages, str) else list(languages)
        # remembered per inputs (2,000 resamples each; a report asks for the same ones often)
        key = (setting, tuple(langs), tuple(self.settings), tuple(self.seeds),
               tuple((id(self.window_tokens[x]), id(self.before[x]), id(self.after[x])) for x in langs))
        if key not in self._intervals:
            rows = self._rows(setting, langs)
            self._intervals[key] = (Interval(math.nan, math.nan, math.nan) if not len(rows) or rows[:, 0].sum() <= 0
                                    else bootstrap(rows, _pooled_change, resamples=RESAMPLES, seed=0))
        return self._intervals[key]

    def seed_changes(self, setting: str, languages: Sequence[str] | str) -> list[float]:
        """Each seed's own NLL change (nats/token, pooled over ``languages``' windows)."""
        langs = [languages] if isinstance(languages, str) else list(languages)
        rows = self._rows(setting, langs)
        tokens = rows[:, 0].sum() if len(rows) else 0.0
        return [float(rows[:, 1 + k].sum() / tokens) if tokens > 0 else math.nan for k in range(len(self.seeds))]

    def trained_nll_fell(self, setting: str | None = None) -> bool:
        """Whether the trained language's held-out NLL fell: its interval lies below 0 and every
        seed's change is negative; without ``setting``, under every setting. False when the
        trained language was not evaluated."""
        if self.train_language not in self.languages:
            return False
        if setting is None:
            return all(self.trained_nll_fell(s) for s in self.settings)
        iv = self.change(setting, self.train_language)
        return bool(iv.high < 0) and all(v < 0 for v in self.seed_changes(setting, self.train_language))

    def verdict(self) -> str:
        """The sentence that judges the result (shown by the report; see the module docstring)."""
        lang = self.train_language
        if lang not in self.languages:
            return (f"{lang} (trained) was not evaluated, so nothing shows that the training taught it anything: "
                    f"treat the other languages' changes as {DAMAGE}.")
        failed = [s for s in self.settings if not self.trained_nll_fell(s)]
        if failed:
            shown = "; ".join(f"{s} {self.change(s, lang).format(3)}" for s in failed)
            return (f"Training did not lower {lang}'s own held-out NLL under {', '.join(failed)} (change in nats/token, "
                    f"95% interval: {shown}): the other languages' changes are {DAMAGE}.")
        others = self.others()
        if not others:
            return f"{lang}'s held-out NLL fell, but no other language was evaluated: forgetting was not measured."
        missing = [c for c in CONTROLS if c not in self.settings]
        if missing:
            return (f"{lang}'s held-out NLL fell under every setting, but without {' and '.join(missing)} frozen the "
                    "core cannot be compared with its controls.")
        core, rnd, mag = (self.change(c, others) for c in CONTROLS)
        shown = (f"the other languages' NLL change with the core frozen {core.format(3)}, random {rnd.format(3)}, "
                 f"magnitude-matched {mag.format(3)} nats/token")
        head = f"{lang}'s held-out NLL fell under every setting; {shown}"
        if core.high < min(rnd.low, mag.low):
            return f"{head}: the core's interval lies below both controls', {AGREES} (freezing it slows forgetting)."
        if core.low > max(rnd.high, mag.high):
            return f"{head}: the core's interval lies above both controls', the opposite of the paper's direction."
        return (f"{head}: the core's interval is not apart from, and below, both controls', so this run gives no "
                "evidence that the core region itself slows forgetting.")

    # rows and tables --------------------------------------------------------------------------
    def forgetting_rows(self) -> list[dict[str, Any]]:
        """One row per setting: frozen entries, NLL change per language (seed mean), on the trained
        language and pooled over the others (NaN where not evaluated) with their 95% intervals,
        whether the trained language's NLL fell, and the last step's loss (seed mean)."""
        rows = []
        for s, setting in enumerate(self.settings):
            delta = dict(zip(self.languages, self.delta_nll()[s]))
            own = self.change(setting, self.train_language) if self.train_language in self.languages else \
                Interval(math.nan, math.nan, math.nan)
            rest = self.change(setting, self.others())
            rows.append({"setting": setting, "frozen_params": self.frozen_params[s], **delta,
                         "trained_delta_nll": own.value, "trained_low": own.low, "trained_high": own.high,
                         "trained_nll_fell": self.trained_nll_fell(setting),
                         "others_mean_delta_nll": rest.value, "others_low": rest.low, "others_high": rest.high,
                         "final_loss": self.losses[s][-1] if self.losses[s] else math.nan})
        return rows

    def interval_rows(self) -> list[dict[str, Any]]:
        """One row per setting and language (and ``"others"``, pooled): the NLL change, its 95%
        interval and each seed's own change."""
        rows = []
        for setting in self.settings:
            for lang in [*self.languages, "others"]:
                langs = self.others() if lang == "others" else [lang]
                iv = self.change(setting, langs)
                rows.append({"setting": setting, "language": lang, "delta_nll": iv.value, "low": iv.low,
                             "high": iv.high, **{f"seed_{k}": v for k, v in zip(self.seeds,
                                                                                 self.seed_changes(setting, langs))}})
        return rows

    def summary_line(self) -> str:
        """One line that says exactly what it compares."""
        rows = self.forgetting_rows()
        steps = int(self.seed_losses.shape[-1])

        def cells(value: str, low: str, high: str) -> str:
            return ", ".join(f"{r['setting']} {r[value]:+.3f} [{r[low]:+.3f}, {r[high]:+.3f}]" for r in rows)

        n_other, n_seed = len(self.others()), len(self.seeds)
        return (f"after {steps} steps on {self.train_language} ({n_seed} seed{'' if n_seed == 1 else 's'}): mean NLL "
                f"change of the other {n_other} language{'' if n_other == 1 else 's'} "
                f"{cells('others_mean_delta_nll', 'others_low', 'others_high')}; of {self.train_language} itself "
                f"{cells('trained_delta_nll', 'trained_low', 'trained_high')} (nats/token, 95% intervals)")

    def payload(self) -> dict[str, Any]:
        return {"settings": self.settings, "languages": self.languages, "train_language": self.train_language,
                "seeds": self.seeds, "frozen_params": self.frozen_params, "tokens": self.tokens,
                "before_nll": self.before_nll, "after_nll": self.after_nll, "delta_nll": self.delta_nll(),
                "forgetting": self.forgetting_rows(), "trained_nll_fell": self.trained_nll_fell(),
                "verdict": self.verdict()}

    to_dict = payload

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"seed_losses": self.seed_losses.double()}
        for lang in self.languages:
            out[f"window_tokens.{lang}"] = self.window_tokens[lang].long()
            out[f"before.{lang}"] = self.before[lang].double()
            out[f"after.{lang}"] = self.after[lang].double()
        return out

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        lrs = self.meta.get("lr_per_step") or []
        losses = self.losses
        steps = max((len(row) for row in losses), default=0)
        # the forgetting table is delta_nll: a table called "forgetting" would overwrite the sidecar
        return {
            "delta_nll": self.forgetting_rows(),
            "intervals": self.interval_rows(),
            "nll": [{"setting": "before", **dict(zip(self.languages, self.before_nll))}]
            + [{"setting": s, **dict(zip(self.languages, row))} for s, row in zip(self.settings, self.after_nll)],
            "losses": [{"step": i, "lr": lrs[i] if i < len(lrs) else None,
                        **{s: row[i] for s, row in zip(self.settings, losses)}} for i in range(steps)],
        }

    def derived_meta(self) -> dict[str, Any]:
        return {"settings": list(self.settings), "train_language": self.train_language, "seeds": list(self.seeds)}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], r: Any) -> RegionTrain:
        languages = list(r["languages"])
        missing = [k for lang in languages for k in (f"window_tokens.{lang}", f"before.{lang}", f"after.{lang}")
                   if k not in tensors] + ([] if "seed_losses" in tensors else ["seed_losses"])
        if missing:
            raise LapeError(f"forgetting result lacks tensors {missing[:3]}: the artifact was damaged or is of an "
                            "older format; re-run the forgetting experiment")
        return cls(list(r["settings"]), languages, str(r["train_language"]), [int(s) for s in r["seeds"]],
                   {lang: tensors[f"window_tokens.{lang}"] for lang in languages},
                   {lang: tensors[f"before.{lang}"] for lang in languages},
                   {lang: tensors[f"after.{lang}"] for lang in languages}, tensors["seed_losses"],
                   [int(k) for k in r["frozen_params"]], meta)

    def validate(self) -> None:
        fix = "the artifact was edited or damaged; re-run the forgetting experiment"
        n_set, n_seed = len(self.settings), len(self.seeds)
        if not n_set or len(set(self.settings)) != n_set:
            raise LapeError(f"forgetting result has settings {self.settings} (none, or repeated): {fix}")
        if not n_seed or len(set(self.seeds)) != n_seed:
            raise LapeError(f"forgetting result has seeds {self.seeds} (none, or repeated): {fix}")
        if len(set(self.languages)) != len(self.languages):
            raise LapeError(f"forgetting result repeats a language: {self.languages}: {fix}")
        for lang in self.languages:
            n, b, a = (d.get(lang) for d in (self.window_tokens, self.before, self.after))
            if n is None or b is None or a is None or n.dim() != 1 or tuple(b.shape) != tuple(n.shape) \
                    or tuple(a.shape) != (n_set, n_seed, n.shape[0]):
                raise LapeError(f"forgetting result windows of {lang!r} are not [windows] tokens and NLL before, "
                                f"[{n_set} settings, {n_seed} seeds, windows] after: {fix}")
            if bool((n < 0).any()) or bool((b < 0).any()) or bool((a < 0).any()):
                raise LapeError(f"forgetting result holds a negative NLL or token count for {lang!r}: {fix}")
        if self.seed_losses.dim() != 3 or tuple(self.seed_losses.shape[:2]) != (n_set, n_seed):
            raise LapeError(f"forgetting result losses are not [{n_set} settings, {n_seed} seeds, steps]: {fix}")
        if bool((self.seed_losses < 0).any()):
            raise LapeError(f"forgetting result holds a negative training loss: {fix}")
        if len(self.frozen_params) != n_set or any(k < 0 for k in self.frozen_params):
            raise LapeError(f"forgetting result frozen counts are not {n_set} non-negative numbers: {fix}")
