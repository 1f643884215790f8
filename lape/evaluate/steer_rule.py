"""How one target language is steered: a :class:`SteeringRule`.

Two edit rules act on the target's neurons at every position (see :func:`lape.intervene.intervene`):

* ``mode="replace"`` (Tang et al.): the target's neurons are *set* to their recorded value
  (``value``: ``firing_mean`` or ``mean``) times ``strength``;
* ``mode="add"`` (Gurgurov et al. 2025, CLaS-Bench): ``strength`` times the neurons'
  difference of means (mean activation on the target minus the mean over the other languages)
  is *added* to what they compute, so the context still shapes them.

The source language's neurons are multiplied by ``source_scale`` (0: Tang et al.'s hard
deactivation; 1: left on). ``exclusive`` keeps only target neurons no other language's set
has. ``layers`` restricts every edit to a window of layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import StageConfig, option
from ..intervene import VALUE_RULES

MODES = ("add", "replace")


@dataclass(frozen=True)
class SteeringRule(StageConfig):
    """The edit that steers towards one target language (module docstring)."""

    mode: str = option("replace", choices=MODES)  # add: + strength x difference of means; replace: set to a value
    strength: float = option(1.5, min=0.0, max=100.0)  # multiplies the added direction or the set value
    value: str = option("firing_mean", choices=VALUE_RULES)  # replace only: firing_mean (mean where the
    # neuron fired) or mean (over all tokens)
    layers: tuple[int, ...] | None = option(None, min=0)  # restrict edits to these layers (None: all)
    source_scale: float = option(0.0, min=0.0, max=1.0)  # factor on the source's neurons (0: off, 1: untouched)
    exclusive: bool = False  # only the target's neurons that no other language's set has

    def request(self, target: str, source: str | None) -> dict[str, Any]:
        """The :func:`lape.intervene.batch_edits` request of one prompt."""
        request: dict[str, Any] = {"strength": self.strength, "layers": self.layers, "exclusive": self.exclusive,
                                   "value": self.value}
        if source and source != target and self.source_scale != 1.0:
            request["scale"] = {source: self.source_scale}
        request["add" if self.mode == "add" else "activate"] = [target]
        return request

    def describe(self) -> str:
        """A short human-readable form, e.g. ``add x4 layers 0-11, source x0.5``."""
        what = f"add x{self.strength:g}" if self.mode == "add" else f"set {self.value} x{self.strength:g}"
        if self.layers:
            lo, hi = min(self.layers), max(self.layers)
            what += f", layers {lo}-{hi}" if len(self.layers) == hi - lo + 1 else f", layers {list(self.layers)}"
        what += ", source off" if self.source_scale == 0 else (
            f", source x{self.source_scale:g}" if self.source_scale != 1 else ", source on")
        return what + (", exclusive neurons" if self.exclusive else "")
