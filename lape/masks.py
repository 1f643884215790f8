"""Labelled masks: :class:`NeuronSets` on the neuron space, :class:`ParamRegions` on the parameter
space, and the neuron view of a region.

Both hold one boolean mask per label (languages for LAPE and regions, clusters for key neurons)
and share :class:`LabelledMasks`: label lookup, counts, subsets, the artifact format and the
model check. A neuron set is one tensor ``[labels, layers, neurons]``; a parameter region is one
tensor ``[labels, *weight.shape]`` per named weight tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .artifacts import Artifact
from .errors import LapeError
from .space import NeuronSpace, ParamSpace

Neuron = tuple[int, int]


class LabelledMasks(Artifact):
    """What neuron sets and parameter regions share: labels in axis order and per-label masks."""

    labels: list[str]
    meta: dict[str, Any]
    REQUIRED: ClassVar[tuple[str, ...]] = ("labels",)
    WHAT: ClassVar[str] = "mask"  # what one label's mask is called in messages

    def _index(self, label: str) -> int:
        if label not in self.labels:
            raise LapeError(f"no {self.WHAT} for {label!r}: the {self.WHAT}s are {', '.join(self.labels)}")
        return self.labels.index(label)

    def counts(self) -> dict[str, int]:
        """Members (neurons or parameters) per label."""
        raise NotImplementedError

    def derived_meta(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "counts": self.counts()}


@dataclass
class NeuronSets(LabelledMasks):
    """Labelled boolean masks over the neuron space.

    Attributes:
        labels: one label per set (languages for LAPE, clusters for key neurons), in axis order.
        masks: bool tensor ``[labels, layers, neurons]``.
        meta: the sidecar: method, thresholds, model id and source-stats fingerprint.

    Example:
        >>> sets = NeuronSets.load("runs/demo/neurons", model=model)
        >>> sets.mask("fr").sum()          # French-specific neurons
        >>> sets.counts_per_layer()["fr"]  # per layer
    """

    labels: list[str]
    masks: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "neurons"
    DESCRIPTION: ClassVar[str] = "neuron sets"
    WHAT: ClassVar[str] = "neuron set"
    TENSORS: ClassVar[tuple[str, ...]] = ("masks",)

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        if self.masks.dtype != torch.bool or self.masks.dim() != 3 or self.masks.shape[0] != len(self.labels):
            raise LapeError(f"NeuronSets needs a bool tensor [labels={len(self.labels)}, layers, neurons]; "
                            f"got {self.masks.dtype} {tuple(self.masks.shape)}")
        if len(set(self.labels)) != len(self.labels):
            raise LapeError(f"NeuronSets labels repeat: {self.labels}; give each set its own label")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.masks.shape[1]), int(self.masks.shape[2]))

    def mask(self, label: str) -> torch.Tensor:
        """Bool ``[layers, neurons]`` of one label."""
        return self.masks[self._index(label)]

    def neurons(self, label: str) -> list[Neuron]:
        """The ``(layer, index)`` pairs of one label, sorted."""
        return [(int(a), int(b)) for a, b in self.mask(label).nonzero().tolist()]

    def union(self) -> torch.Tensor:
        """Bool ``[layers, neurons]``: neurons in any set."""
        return self.masks.any(0)

    def counts(self) -> dict[str, int]:
        return {lab: int(m.sum()) for lab, m in zip(self.labels, self.masks)}

    def counts_per_layer(self) -> dict[str, list[int]]:
        """Per label, the number of its neurons in each layer."""
        return {lab: m.sum(1).tolist() for lab, m in zip(self.labels, self.masks)}

    def overlaps(self) -> torch.Tensor:
        """int64 ``[labels, labels]``: neurons shared by each pair (diagonal: set sizes)."""
        flat = self.masks.reshape(len(self.labels), -1).to(torch.float64)
        return (flat @ flat.T).round().to(torch.int64)

    def subset(self, labels: Iterable[str]) -> NeuronSets:
        """The sets of some labels only."""
        labels = list(labels)
        idx = [self._index(lab) for lab in labels]
        return NeuronSets(labels, self.masks[idx].clone(), dict(self.meta))

    @classmethod
    def from_neurons(cls, groups: Mapping[str, Iterable[Neuron]], shape: tuple[int, int],
                     meta: dict[str, Any] | None = None) -> NeuronSets:
        """Build sets from hand-written ``{label: [(layer, index), ...]}``."""
        labels = list(groups)
        masks = torch.zeros(len(labels), *shape, dtype=torch.bool)
        for k, lab in enumerate(labels):
            for layer, index in groups[lab]:
                if not (0 <= layer < shape[0] and 0 <= index < shape[1]):
                    raise LapeError(f"neuron ({layer}, {index}) of {lab!r} is outside the "
                                    f"{shape[0]} x {shape[1]} neuron space")
                masks[k, layer, index] = True
        return cls(labels, masks, dict(meta or {}))

    def check_model(self, model: nn.Module, space: NeuronSpace | None = None) -> None:
        """Refuse a model these sets were not made for (fingerprint, then shape)."""
        super().check_model(model)
        (space or NeuronSpace.of(model)).check_compatible(self.masks.shape, "the neuron sets")

    # artifact ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"masks": self.masks}

    def derived_meta(self) -> dict[str, Any]:
        return {**super().derived_meta(), "num_layers": self.shape[0], "neurons_per_layer": self.shape[1]}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> NeuronSets:
        return cls(list(meta["labels"]), tensors["masks"].to(torch.bool), meta)

    def validate(self) -> None:
        layers, neurons = self.meta.get("num_layers"), self.meta.get("neurons_per_layer")
        if layers is not None and neurons is not None and (layers, neurons) != self.shape:
            raise LapeError(f"the neuron sets are {self.shape[0]} x {self.shape[1]} but their sidecar says "
                            f"{layers} x {neurons}: the artifact was edited or damaged; re-run lape identify")


def random_like_mask(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random control of a bool ``[..., layers, neurons]`` mask: for every leading index and layer,
    as many neurons as ``mask`` holds there, drawn without replacement (rows in order, one
    ``randperm`` each). The one random sampler behind every random neuron set."""
    out = torch.zeros_like(mask)
    rows, out_rows = mask.reshape(-1, mask.shape[-1]), out.view(-1, mask.shape[-1])
    for r in range(rows.shape[0]):
        k = int(rows[r].sum())
        if k:
            out_rows[r, torch.randperm(mask.shape[-1], generator=generator)[:k]] = True
    return out


MONO_PREFIX = "mono:"  # a monolingual region's label is MONO_PREFIX + its language


def mono_label(language: str) -> str:
    """The label of ``language``'s monolingual region (``"mono:fr"``)."""
    return MONO_PREFIX + language


def mono_language(label: str) -> str | None:
    """The language of a monolingual region's label, ``None`` for any other label."""
    return label[len(MONO_PREFIX):] if label.startswith(MONO_PREFIX) else None


@dataclass
class ParamRegions(LabelledMasks):
    """Labelled boolean masks over named weight tensors (linguistic regions, their controls).

    Attributes:
        labels: one label per region (``"core"``, a language, ``"random"``, ...), in axis order.
        masks: ``{tensor name: bool [labels, *weight.shape]}`` (names as in ``named_parameters()``).
        meta: the sidecar.

    Example:
        >>> regions.mask("core")["model.layers.0.mlp.down_proj.weight"].sum()
    """

    labels: list[str]
    masks: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "regions"
    WHAT: ClassVar[str] = "region"

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        for name, m in self.masks.items():
            if m.dtype != torch.bool or m.dim() < 2 or m.shape[0] != len(self.labels):
                raise LapeError(f"ParamRegions mask of {name} must be bool [labels={len(self.labels)}, ...]; "
                                f"got {m.dtype} {tuple(m.shape)}")

    def mask(self, label: str) -> dict[str, torch.Tensor]:
        """``{tensor name: bool mask of the weight's shape}`` of one label."""
        k = self._index(label)
        return {name: m[k] for name, m in self.masks.items()}

    def counts(self) -> dict[str, int]:
        return {lab: sum(int(m[k].sum()) for m in self.masks.values()) for k, lab in enumerate(self.labels)}

    def subset(self, labels: Iterable[str]) -> ParamRegions:
        labels = list(labels)
        idx = [self._index(lab) for lab in labels]
        return ParamRegions(labels, {n: m[idx].clone() for n, m in self.masks.items()}, dict(self.meta))

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.masks)

    def derived_meta(self) -> dict[str, Any]:
        return {**super().derived_meta(), "tensor_names": list(self.masks)}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> ParamRegions:
        return cls(list(meta["labels"]), {n: tensors[n].to(torch.bool) for n in meta["tensor_names"]}, meta)

    # neuron view -----------------------------------------------------------------------------
    def neuron_counts(self, space: ParamSpace) -> torch.Tensor:
        """int64 ``[labels, layers, neurons]``: how many of each neuron's parameters (its down
        projection column and up/gate rows, see :meth:`ParamSpace.neuron_mask`) are in each region.

        Tensors the regions do not cover count as outside. Divide by
        ``space.params_per_neuron(layer)`` for a share.
        """
        counts = torch.zeros(len(self.labels), space.num_layers, space.neurons_per_layer, dtype=torch.int64)
        for layer, slices in enumerate(space.neuron_slices):
            for s in slices:
                m = self.masks.get(s.name)
                if m is None:
                    continue
                if tuple(m.shape[1:]) != space.info(s.name).shape:
                    raise LapeError(f"the region mask of {s.name} is {tuple(m.shape[1:])} but the model's tensor "
                                    f"is {space.info(s.name).shape}: use regions made for this model")
                other = [d for d in range(1, m.dim()) if d != s.axis + 1]
                per_row = m.sum(other) if other else m.to(torch.int64)
                counts[:, layer] += per_row.reshape(len(self.labels), s.copies, -1).sum(1).cpu()
        return counts

    def to_neuron_sets(self, space: ParamSpace, min_share: float = 0.5) -> NeuronSets:
        """The neuron view of every region as :class:`NeuronSets` (same labels), e.g. to compare
        regions with LAPE neurons or to silence them with :func:`lape.intervene.intervene`."""
        meta = {"method": f"neuron view of {self.meta.get('method', 'regions')}", "min_share": min_share,
                "fingerprint": dict(self.meta.get("fingerprint", {}))}
        return NeuronSets(list(self.labels), self._neuron_select(space, min_share), meta)

    def _neuron_select(self, space: ParamSpace, min_share: float) -> torch.Tensor:
        if not 0.0 < min_share <= 1.0:
            raise LapeError(f"min_share={min_share} must be in (0, 1]: the share of a neuron's parameters "
                            "that must lie in the region")
        total = torch.tensor([space.params_per_neuron(layer) for layer in range(space.num_layers)],
                             dtype=torch.float64)
        # compare integer counts; the epsilon keeps 0.07 * 100 from rounding up to 8
        needed = torch.ceil(min_share * total - 1e-9).to(torch.int64)
        return self.neuron_counts(space) >= needed[None, :, None]


def chance_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Expected ``|A & B|`` of two independent random sets with the per-layer counts of masks ``a``
    and ``b`` ``[L, N]``: ``sum_layer a_l b_l / N``."""
    width = a.shape[1]
    return float((a.sum(1).double() * b.sum(1).double()).sum() / width)


def set_agreement(a: NeuronSets, b: NeuronSets) -> list[dict[str, Any]]:
    """Per label the two collections share: sizes, shared neurons, the Jaccard overlap
    ``|A & B| / |A | B|``, and the Jaccard two independent random sets with the same counts per
    layer would have in expectation (``sum_layer a_l b_l / width`` shared). For stability checks:
    sets identified on two disjoint halves of the text should agree far above chance."""
    if a.shape != b.shape:
        raise LapeError(f"the neuron sets have different shapes ({a.shape} and {b.shape}): compare sets of one model")
    rows = []
    for label in (x for x in a.labels if x in b.labels):
        ma, mb = a.mask(label), b.mask(label)
        shared, union = int((ma & mb).sum()), int((ma | mb).sum())
        expected = chance_overlap(ma, mb)
        size_a, size_b = int(ma.sum()), int(mb.sum())
        rows.append({"label": label, "size_a": size_a, "size_b": size_b, "shared": shared,
                     "jaccard": shared / union if union else float("nan"),
                     "chance_jaccard": expected / (size_a + size_b - expected) if size_a + size_b else float("nan")})
    if not rows:
        raise LapeError(f"the neuron sets share no label ({', '.join(a.labels)} vs {', '.join(b.labels)})")
    return rows


def parse_neuron(text: str) -> Neuron:
    """``"17:803"`` -> ``(17, 803)``: the one way a neuron is written (``LAYER:INDEX``); anything
    else is a one-line error."""
    layer, sep, index = text.partition(":")
    if not sep or not layer.strip().isdigit() or not index.strip().isdigit():
        raise LapeError(f"a neuron is written LAYER:INDEX, e.g. 17:803; got {text!r}")
    return int(layer), int(index)
