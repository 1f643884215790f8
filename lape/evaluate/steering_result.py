"""The result of a steering evaluation (:class:`SteeringEval`, kind ``steering``) and the
intervals of its rates: every success rate is a share of outputs, shown with its Wilson 95%
interval (:func:`rate_interval`; a mean over targets pools their outputs, :func:`pooled_interval`).
:class:`lape.evaluate.steering.Steerer` produces it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .. import artifacts
from ..errors import LapeError
from ..intervals import Interval, wilson

CONTROLS = ("random", "source_on", "source_off", "no_ngram_ban", "plain")


RATES = ("steered_success", "unsteered_success", "steered_success_own_label", "fluent_success")
_NAN = Interval(math.nan, math.nan, math.nan)


def rate_interval(rate: float | None, n: int) -> Interval:
    """The Wilson 95% interval of a share ``rate`` of ``n`` outputs (``round(rate * n)``
    successes; NaN for a missing rate or no outputs).

    Example:
        >>> rate_interval(65 / 70, 70).format(percent=True)
        '93% (84-97%)'
    """
    return pooled_interval([(rate, n)])


def pooled_interval(rates: Iterable[tuple[float | None, int]]) -> Interval:
    """The Wilson 95% interval of several ``(rate, n)`` groups of outputs taken together:
    ``wilson(sum round(rate n), sum n)`` (NaN without outputs)."""
    k = n = 0
    for rate, count in rates:
        if rate is None or not math.isfinite(rate) or not count:
            continue
        k, n = k + round(rate * count), n + int(count)
    return wilson(k, n) if n else _NAN


def row_interval(row: dict[str, Any], name: str) -> Interval:
    """The interval a table row holds as ``name``, ``name_low``, ``name_high`` (NaN if absent)."""
    return Interval(*(float(row.get(k, math.nan)) for k in (name, f"{name}_low", f"{name}_high")))


def format_rate(interval: Interval) -> str:
    """``"93% (84-97%)"``; a dash for a missing rate, the bare rate without an interval."""
    if not math.isfinite(interval.value):
        return "–"
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return f"{interval.value * 100:.0f}%"
    return interval.format(percent=True)


def _bounds(name: str, interval: Interval) -> dict[str, float]:
    """``{name_low, name_high}`` of an interval, for a table row."""
    return {f"{name}_low": interval.low, f"{name}_high": interval.high}


def mean_of(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan


def median_of(values: Iterable[float]) -> float:
    values = [float(v) for v in values if not math.isnan(float(v))]
    return statistics.median(values) if values else math.nan


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
        """``summary``: the rows, each rate with its Wilson 95% interval (``*_low``, ``*_high``);
        ``conditions``: :meth:`condition_summary`; ``examples``."""
        summary = [{**r, **{b: v for k in RATES if k in r for b, v in _bounds(k, self.interval(r, k)).items()}}
                   for r in self.rows]
        return {"summary": summary, "conditions": self.condition_summary(), "examples": self.examples}

    def prompts(self, row: dict[str, Any]) -> int:
        """The number of outputs behind a row's rates (its ``prompts``; older rows: the sidecar's)."""
        return int(row.get("prompts") or self.meta.get("prompts") or 0)

    def interval(self, rows: dict[str, Any] | Sequence[dict[str, Any]], key: str = "steered_success") -> Interval:
        """The Wilson 95% interval of the rate ``key`` of one row, or of several rows' outputs
        pooled (the random control's draws of one target; every target of a condition):
        ``wilson(sum_r round(rate_r n_r), sum_r n_r)``. The point value is the pooled rate,
        which is the mean of the rows' rates when they have equal ``n`` (as in one evaluation)."""
        rows = [rows] if isinstance(rows, dict) else list(rows)
        rows = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        return pooled_interval([(r[key], self.prompts(r)) for r in rows])

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

    def steered(self, condition: str = "steered") -> list[dict[str, Any]]:
        """The rows of one condition (``steered`` by default; see :data:`CONTROLS`)."""
        return [r for r in self.rows if r.get("condition", "steered") == condition]

    def condition_summary(self) -> list[dict[str, Any]]:
        """Per condition (``unsteered`` first, the random draws pooled): targets, mean and
        smallest success, targets at >= 90%, mean fluent success, median fluency ratio and
        non-letter share; for the random control also the spread (SD) of the mean over draws."""
        steered = self.steered()
        out = [{"condition": "unsteered", "targets": len(steered),
                "mean_success": mean_of(r["unsteered_success"] for r in steered),
                "min_success": min((r["unsteered_success"] for r in steered), default=math.nan),
                **_bounds("mean_success", self.interval(steered, "unsteered_success")),
                **_bounds("min_success", self.interval(
                    min(steered, key=lambda r: r["unsteered_success"]), "unsteered_success") if steered else _NAN)}]
        for condition in dict.fromkeys(r.get("condition", "steered") for r in self.rows):
            rows = self.steered(condition)
            sweep = [s for s in (self.meta.get("inputs") or {}).get("strengths") or [None] if s is not None]
            strengths = sorted({r["strength"] for r in rows}) if sweep else [None]  # a profile mixes strengths
            for strength in strengths:
                group = [r for r in rows if strength is None or r["strength"] == strength]
                by_target: dict[str, list[float]] = {}
                for r in group:
                    by_target.setdefault(r["target"], []).append(r["steered_success"])
                success = [mean_of(v) for v in by_target.values()]
                smallest = min(by_target, key=lambda t: mean_of(by_target[t]), default=None)
                row = {"condition": condition, "targets": len(by_target), "mean_success": mean_of(success),
                       "min_success": min(success, default=math.nan),
                       "at_least_90": sum(v >= 0.9 for v in success),
                       **_bounds("mean_success", self.interval(group)),
                       **_bounds("min_success", self.interval([r for r in group if r["target"] == smallest])
                                 if smallest is not None else _NAN)}
                if strength is not None and len(strengths) > 1:
                    row["strength"] = strength
                if any("fluent_success" in r for r in group):
                    row.update({"mean_fluent_success": mean_of(r["fluent_success"] for r in group),
                                **_bounds("mean_fluent_success", self.interval(group, "fluent_success")),
                                "median_fluency_ratio": median_of(r["fluency_ratio"] for r in group)})
                row["median_non_letter"] = median_of(r.get("non_letter", math.nan) for r in group)
                seeds = sorted({r["seed"] for r in group if r.get("seed") is not None})
                if len(seeds) > 1:
                    per_seed = [mean_of(r["steered_success"] for r in group if r["seed"] == s) for s in seeds]
                    row.update({"draws": len(seeds), "sd_over_draws": statistics.stdev(per_seed)})
                out.append(row)
        return out

    def summary_lines(self) -> list[str]:
        lines = [f"{r['target']} x{r['strength']:g}: steered success {self.interval(r).format(percent=True)} "
                 f"(unsteered {r['unsteered_success']:.0%}), distinct-2 {r['steered_distinct_2']:.2f}"
                 + (f", fluent {r['fluent']:.0%}, PPL x{r['fluency_ratio']:.1f} of real text"
                    if "fluent" in r else "")
                 for r in self.steered()]
        for c in self.condition_summary()[1:]:
            if c["condition"] != "steered":
                lines.append(f"control {c['condition']}: mean success {c['mean_success']:.0%} "
                             f"(95% {c['mean_success_low']:.0%}-{c['mean_success_high']:.0%}; "
                             f"smallest {c['min_success']:.0%})")
        return lines
