"""A bridge from LAPE neurons to linguistic regions: do the weights of a language's neurons fall
in the core or monolingual regions more often than chance?

A neuron ``(layer, i)`` owns its down projection's input column and its up/gate projections'
output rows (and bias entries; :meth:`lape.space.ParamSpace.neuron_mask`). For a neuron set
``N`` (e.g. LAPE's French neurons) and a region ``R``:

* ``param_share``: the share of the set's owned parameters that lie in ``R``;
* ``touched``: the share of the set's neurons with at least one owned parameter in ``R``;

each next to its **chance** value, the expectation for a random set with the same number of
neurons in every layer (computed exactly from the layer's neurons, no sampling):
``chance = sum_layer n_layer * mean over the layer's neurons / sum_layer n_layer``.
``enrichment = observed / chance``: above 1, the set's weights sit in the region more than a
random set's would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import artifacts
from ..errors import LapeError
from ..masks import NeuronSets, ParamRegions
from ..space import ParamSpace


@dataclass
class RegionBridge(artifacts.Artifact):
    """The rows of :func:`bridge_rows` as a saved result (``bridge.csv`` beside it).

    Example:
        >>> RegionBridge(bridge_rows(sets, regions, space), meta).save("runs/demo/region-bridge")
    """

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "region_bridge"
    DESCRIPTION: ClassVar[str] = "neuron set / region overlap"

    def payload(self) -> Any:
        return self.rows

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"bridge": self.rows}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> RegionBridge:
        return cls(list(payload or []), meta)

    def validate(self) -> None:
        for r in self.rows:
            if not 0 <= r.get("param_share", 0) <= 1 or not 0 <= r.get("touched", 0) <= 1:
                raise LapeError("an overlap share lies outside [0, 1]: the artifact was edited or damaged; "
                                "re-run lape regions bridge")


def region_bridge(sets: NeuronSets, regions: ParamRegions, space: ParamSpace,
                   region_labels: list[str] | None = None, *, out: str | Path | None = None) -> RegionBridge:
    """:func:`bridge_rows` as a :class:`RegionBridge` with a sidecar naming both inputs;
    given ``out=``, saved there, and returned from there when made from the same inputs."""
    inputs = {"neurons": sets.identity(), "regions": regions.identity(), "region_labels": region_labels,
              "space": [space.model_class, space.num_layers, space.neurons_per_layer]}
    fp = regions.meta.get("fingerprint") or {}
    key = artifacts.stage_key(RegionBridge.KIND, model_fingerprint=fp, config={}, inputs=inputs)

    def compute() -> RegionBridge:
        rows = bridge_rows(sets, regions, space, region_labels=region_labels)
        meta = artifacts.sidecar(RegionBridge.KIND, model_id=regions.meta.get("model_id"), model_fingerprint=fp,
                                 num_layers=space.num_layers, neurons_per_layer=space.neurons_per_layer,
                                 languages=list(sets.labels), inputs=inputs,
                                 neurons={"method": sets.meta.get("method"), "counts": sets.counts()},
                                 chance="a random set with the same number of neurons in every layer "
                                        "(exact expectation)")
        return RegionBridge(rows, meta)

    return artifacts.run_stage(RegionBridge, out, key, compute)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def bridge_rows(sets: NeuronSets, regions: ParamRegions, space: ParamSpace,
                   set_labels: list[str] | None = None, region_labels: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (neuron set, region): observed and chance shares and their ratio.

    Args:
        sets: neuron sets (LAPE languages, key neurons, ...) of the model ``space`` maps.
        regions: parameter regions of the same model.
        space: the model's :class:`ParamSpace`.
        set_labels, region_labels: which labels to compare (default all).

    Returns:
        Rows ``{"set", "region", "neurons", "param_share", "param_share_chance",
        "param_enrichment", "touched", "touched_chance", "touched_enrichment"}``.

    Raises:
        LapeError: the sets' shape is not the space's, or an unknown label.

    Example:
        >>> rows = bridge_rows(lape_sets, regions, ParamSpace.of(model), region_labels=["core"])
    """
    shape = (space.num_layers, space.neurons_per_layer)
    if tuple(sets.shape) != shape:
        raise LapeError(f"the neuron sets are {tuple(sets.shape)} but the regions' model has {shape} "
                        "(layers x neurons): use sets and regions made for the same model")
    set_labels = list(set_labels or sets.labels)
    region_labels = list(region_labels or regions.labels)
    per_neuron = torch.tensor([space.params_per_neuron(layer) for layer in range(space.num_layers)],
                              dtype=torch.float64)[:, None]  # (L, 1)
    idx = [regions._index(label) for label in region_labels]  # refuses an unknown label
    counts = regions.neuron_counts(space)[idx].to(torch.float64)  # (R, L, N), without copying the masks
    share = counts / per_neuron  # share of each neuron's parameters in each region
    touched = (counts > 0).to(torch.float64)
    rows = []
    for s in set_labels:
        mask = sets.mask(s)  # (L, N) bool
        n_layer = mask.sum(1).to(torch.float64)  # (L,)
        n = float(n_layer.sum())
        for k, r in enumerate(region_labels):
            if n == 0:
                obs_p = obs_t = chance_p = chance_t = float("nan")
            else:
                obs_p = float(share[k][mask].sum()) / n
                obs_t = float(touched[k][mask].sum()) / n
                chance_p = float((n_layer * share[k].mean(1)).sum()) / n
                chance_t = float((n_layer * touched[k].mean(1)).sum()) / n
            rows.append({"set": s, "region": r, "neurons": int(n), "param_share": obs_p,
                         "param_share_chance": chance_p, "param_enrichment": _ratio(obs_p, chance_p),
                         "touched": obs_t, "touched_chance": chance_t, "touched_enrichment": _ratio(obs_t, chance_t)})
    return rows
