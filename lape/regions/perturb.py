"""Single-parameter perturbation (Zhang et al., ACL 2024, step 5; methods.md 3(b), 6(b)).

Zhang et al. multiply one weight by 4: on a particular hidden dimension ("L1-N2100") Chinese
perplexity jumps to 257.7; on another ("L1-N4200") it stays at 5.9. Their code is not released
and the figure does not name the matrix or the element. Here:

* the dimension is the top massive channel (:func:`lape.regions.dims.find_massive_dims`) and the
  layer the first one whose output shows it (or ``config.layer``);
* the tensor is ``config.tensor_type`` of that layer (default ``mlp.down_proj.weight``: the
  matrix that writes the massive activation, where Yu et al. find "super weights");
* the entry is the one on that channel (along the tensor's residual axis,
  :func:`lape.regions.dims.residual_axes`) with the largest ``|score|`` (an importance, e.g.
  ``sum_l |S_l|``) or, without scores, the largest ``|weight|`` (:func:`pick_entry`);
* the control is the entry picked the same way on an ordinary channel of the same tensor (by
  default the channel whose activation peak is the median one).

:func:`perturb` evaluates the mean NLL per language unmodified, with the massive entry scaled
and with the ordinary entry scaled (``lape.weights.edit_weights``, restored bit-exactly), and
returns a :class:`PerturbResult` (artifact kind ``perturb``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..activations import check_corpus, corpus_key
from ..config import StageConfig, option
from ..errors import LapeError
from ..evaluate.perplexity import LanguageNLL, PerplexityConfig
from ..models import check_positions, fingerprint
from ..space import ParamSpace
from ..weights import edit_weights
from .dims import MassiveDims, hidden_size, residual_axes
from .importance import ParamImportance

logger = logging.getLogger(__name__)
CONDITIONS = ("massive", "ordinary")


@dataclass(frozen=True)
class PerturbConfig(StageConfig):
    """Settings of :func:`perturb`."""

    factor: float = 4.0  # the entry is multiplied by this (Zhang et al.: 4)
    layer: int | None = option(None, min=0)  # None: the first layer whose output shows the top massive channel
    tensor_type: str = "mlp.down_proj.weight"  # block-relative name of the perturbed tensor
    tokens_per_language: int = option(1024, gt=0)  # valid tokens per language
    seq_len: int = option(256, min=2, max=1 << 16)  # packed sequence length
    batch_size: int = option(4, min=1, max=4096)  # sequences per forward pass
    seed: int = option(0, min=0)  # corpus shuffling
    split: str = "valid"  # held-out split
    chunk_size: int = option(512, min=1, key=False)  # positions whose vocabulary logits exist at once


def _param_of(space: ParamSpace, layer: int, tensor_type: str) -> str:
    """The full name of ``tensor_type`` in ``layer``."""
    if not 0 <= layer < space.num_layers:
        raise LapeError(f"layer {layer} is outside the {space.num_layers} decoder layers of {space.model_class}: "
                        f"use a layer from 0 to {space.num_layers - 1}")
    found = [p.name for p in space.params if p.layer == layer and p.type == tensor_type]
    if not found:
        raise LapeError(f"{space.model_class} has no tensor type {tensor_type!r} in layer {layer}: use one of "
                        f"{', '.join(space.tensor_types())}")
    return found[0]


def pick_entry(model: nn.Module, layer: int, tensor_type: str, dim: int, axes: Mapping[str, int | None] | None = None,
               scores: torch.Tensor | None = None, *, space: ParamSpace | None = None) -> tuple[str, tuple[int, ...]]:
    """The entry of one tensor lying on hidden channel ``dim`` with the largest ``|score|``.

    Args:
        model: the model.
        layer: the decoder layer.
        tensor_type: block-relative name, e.g. ``"mlp.down_proj.weight"``.
        dim: the hidden channel; the entry lies on it along the tensor's residual axis.
        axes: :func:`lape.regions.dims.residual_axes` of the model (computed when ``None``).
        scores: a weight-shaped score (e.g. ``sum_l |S_l|`` of the tensor); ``None``: the weight.
        space: the model's :class:`ParamSpace`, if already built.

    Returns:
        ``(parameter name, index)``; the lowest index wins ties.

    Raises:
        LapeError: a layer, tensor type or channel the model does not have, a tensor without a
            residual axis, or scores of the wrong shape.

    Example:
        >>> name, index = pick_entry(model, 1, "mlp.down_proj.weight", massive.dims[0], residual_axes(model))
        >>> index[0] == massive.dims[0]   # down_proj is [hidden, mlp]: the row of the channel
        True
    """
    space = space or ParamSpace.of(model)
    name = _param_of(space, layer, tensor_type)
    axes = axes if axes is not None else residual_axes(model, space)
    axis = axes.get(name)
    if axis is None:
        usable = [t for t in space.tensor_types() if axes.get(_param_of(space, layer, t)) is not None]
        raise LapeError(f"tensor type {tensor_type!r} does not lie on the residual stream: use one of {', '.join(usable)}")
    weight = dict(model.named_parameters())[name]
    if not 0 <= dim < weight.shape[axis]:
        raise LapeError(f"hidden channel {dim} is outside [0, {weight.shape[axis]}) of {type(model).__name__}: "
                        "pass a channel of this model (e.g. from find_massive_dims)")
    values = weight.detach() if scores is None else scores
    if tuple(values.shape) != tuple(weight.shape):
        raise LapeError(f"scores for {name} have shape {tuple(values.shape)}, the weight {tuple(weight.shape)}: "
                        "pass a weight-shaped score of this tensor")
    line = values.select(axis, dim).float().abs().reshape(-1)  # argmax returns the first maximum
    rest = [s for d, s in enumerate(weight.shape) if d != axis]
    flat = int(torch.argmax(line)) if line.numel() else 0
    index = list(torch.unravel_index(torch.tensor(flat), tuple(rest))) if rest else []
    index = [int(i) for i in index]
    index.insert(axis, dim)
    return name, tuple(index)


def one_hot_mask(model: nn.Module, name: str, index: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """``{name: bool mask}`` with only entry ``index`` set, for :func:`lape.weights.edit_weights`."""
    weight = dict(model.named_parameters())[name]
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    mask[index] = True
    return {name: mask}


@dataclass
class PerturbResult(artifacts.Artifact):
    """Mean NLL per language, unmodified and with one entry scaled on a massive and on an ordinary channel.

    Attributes:
        languages: evaluated languages.
        base_nll: nats/token of the unmodified model, per language.
        massive_nll: with the entry on the massive channel scaled.
        ordinary_nll: with the entry on the ordinary channel scaled.
        entries: per condition (``massive``, ``ordinary``): ``tensor``, ``index``, ``layer``,
            ``dim``, ``value`` (before), ``scaled`` (after) and ``score`` (what picked it).
        factor: the scale factor.
        tokens: evaluated tokens per language.
    """

    languages: list[str]
    base_nll: list[float]
    massive_nll: list[float]
    ordinary_nll: list[float]
    entries: dict[str, dict[str, Any]]
    factor: float
    tokens: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "perturb"
    DESCRIPTION: ClassVar[str] = "single-parameter perturbation"

    def nll(self, condition: str) -> list[float]:
        """NLL per language of ``"base"``, ``"massive"`` or ``"ordinary"``."""
        table = {"base": self.base_nll, "massive": self.massive_nll, "ordinary": self.ordinary_nll}
        if condition not in table:
            raise LapeError(f"unknown condition {condition!r}: use base, massive or ordinary")
        return table[condition]

    def ppl(self, condition: str) -> list[float]:
        """``exp(nll)`` per language."""
        return [_exp(v) for v in self.nll(condition)]

    @staticmethod
    def _entry_label(e: Mapping[str, Any]) -> str:
        return f"L{e['layer']}-N{e['dim']} ({e['tensor']}{list(e['index'])})"

    def summary_line(self) -> str:
        """One line: the two entries and the mean PPL under each condition."""
        def mean_ppl(condition: str) -> float:
            vals = [v for v in self.ppl(condition) if not math.isnan(v)]
            return sum(vals) / len(vals) if vals else math.nan

        m, o = self.entries["massive"], self.entries["ordinary"]
        return (f"x{self.factor:g} on massive {self._entry_label(m)}: mean PPL {mean_ppl('base'):.4g} -> "
                f"{mean_ppl('massive'):.4g}; on ordinary {self._entry_label(o)}: -> {mean_ppl('ordinary'):.4g} "
                f"({len(self.languages)} languages)")

    def payload(self) -> dict[str, Any]:
        return {"languages": self.languages, "base_nll": self.base_nll, "massive_nll": self.massive_nll,
                "ordinary_nll": self.ordinary_nll, "entries": self.entries, "factor": self.factor,
                "tokens": self.tokens, "base_ppl": self.ppl("base"), "massive_ppl": self.ppl("massive"),
                "ordinary_ppl": self.ppl("ordinary")}

    to_dict = payload

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        rows = []
        for i, lang in enumerate(self.languages):
            row: dict[str, Any] = {"language": lang, "tokens": self.tokens.get(lang),
                                   "base_nll": self.base_nll[i], "base_ppl": _exp(self.base_nll[i])}
            for c in CONDITIONS:
                v = self.nll(c)[i]
                row.update({f"{c}_nll": v, f"{c}_ppl": _exp(v), f"{c}_delta_nll": v - self.base_nll[i]})
            rows.append(row)
        entries = [{"condition": c, **{k: (list(v) if k == "index" else v) for k, v in self.entries[c].items()},
                    "factor": self.factor} for c in CONDITIONS]
        return {"perturb_nll": rows, "perturb_entries": entries}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], r: Any) -> PerturbResult:
        def floats(v: list[float | None]) -> list[float]:  # null: NaN (no token)
            return [math.nan if x is None else float(x) for x in v]

        entries = {c: {**r["entries"][c], "index": [int(i) for i in r["entries"][c]["index"]]} for c in CONDITIONS}
        return cls(list(r["languages"]), floats(r["base_nll"]), floats(r["massive_nll"]), floats(r["ordinary_nll"]),
                   entries, float(r["factor"]), {k: int(v) for k, v in r["tokens"].items()}, meta)

    def validate(self) -> None:
        n = len(self.languages)
        if any(len(v) != n for v in (self.base_nll, self.massive_nll, self.ordinary_nll)):
            raise LapeError(f"perturbation result does not hold {n} values per condition: the artifact was "
                            "edited or damaged; re-run the perturbation")
        if any(v < 0 for v in self.base_nll + self.massive_nll + self.ordinary_nll if not math.isnan(v)):
            raise LapeError("perturbation result holds a negative NLL: the artifact was edited or damaged; "
                            "re-run the perturbation")
        if set(self.entries) != set(CONDITIONS):
            raise LapeError(f"perturbation result has entries {sorted(self.entries)}, not massive and ordinary: "
                            "the artifact was edited or damaged; re-run the perturbation")


def _exp(v: float) -> float:
    if math.isnan(v):
        return math.nan
    return math.exp(v) if v < 700 else math.inf


def _score_tensor(scores: Any, name: str) -> torch.Tensor | None:
    """The weight-shaped score of ``name``: ``sum_l |S_l|`` of an importance, or ``scores[name]``."""
    if scores is None:
        return None
    if isinstance(scores, ParamImportance):
        if name not in scores.scores:
            raise LapeError(f"the importance has no scores for {name}: compute it with that tensor included")
        return scores.scores[name].abs().sum(0)
    if isinstance(scores, Mapping):
        if name not in scores:
            raise LapeError(f"scores has no tensor {name}: pass {{parameter name: weight-shaped score}} "
                            "covering the perturbed tensor")
        return scores[name]
    raise LapeError(f"scores must be a ParamImportance or {{parameter name: tensor}}, got {type(scores).__name__}")


def _check_massive(massive: MassiveDims, hidden: int) -> int:
    if massive.hidden_size != hidden:
        raise LapeError(f"the massive dims are over {massive.hidden_size} channels but the model has {hidden}: "
                        "find them on this model (find_massive_dims)")
    if not massive.dims:
        raise LapeError(f"no massive channel (none above {massive.ratio:g} x the median peak): run "
                        "find_massive_dims with a lower ratio=")
    return massive.dims[0]


def _entry(model: nn.Module, name: str, index: tuple[int, ...], layer: int, dim: int, factor: float,
           score: torch.Tensor | None) -> dict[str, Any]:
    value = float(dict(model.named_parameters())[name].detach()[index])
    return {"tensor": name, "index": list(index), "layer": layer, "dim": dim, "value": value,
            "scaled": value * factor, "score": float(score[index]) if score is not None else abs(value),
            "picked_by": "score" if score is not None else "|weight|"}


def perturb(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    massive: MassiveDims,
    config: PerturbConfig = PerturbConfig(),
    *,
    scores: ParamImportance | Mapping[str, torch.Tensor] | None = None,
    ordinary_dim: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> PerturbResult:
    """Scale one weight on the top massive channel and one on an ordinary channel; NLL per language.

    Args:
        model: the model ``massive`` was found on; its weights are restored bit-exactly.
        corpus: ``{language: sequences}`` of the held-out split (see :func:`lape.load_corpus`).
        massive: from :func:`lape.regions.dims.find_massive_dims`; its first channel is perturbed.
        config: factor, layer, tensor type and evaluation settings.
        scores: what picks the entry on a channel: a :class:`ParamImportance` (``sum_l |S_l|``)
            or ``{parameter name: weight-shaped score}``; ``None``: the largest ``|weight|``.
        ordinary_dim: the control channel (default :meth:`MassiveDims.ordinary_dim`).
        out: a folder to save the result into; a result there made from the same model, text,
            massive channels, scores and settings is returned without recomputation.
        progress: show a progress bar.

    Returns:
        :class:`PerturbResult`.

    Raises:
        LapeError: no massive channel, massive dims of another model, a layer, tensor type or
            channel the model does not have, an ordinary channel equal to the massive one, or a
            language without text.

    Example:
        >>> massive = find_massive_dims(model, corpus["en"])
        >>> res = perturb(model, corpus, massive, PerturbConfig(factor=4.0))
        >>> res.summary_line()
    """

    space = ParamSpace.of(model)
    hidden = hidden_size(model)
    dim = _check_massive(massive, hidden)
    layer = config.layer if config.layer is not None else massive.first_layer.get(dim)
    if layer is None:
        raise LapeError(f"the massive dims do not say where channel {dim} first appears: pass PerturbConfig(layer=...)")
    control = massive.ordinary_dim() if ordinary_dim is None else int(ordinary_dim)
    if control == dim:
        raise LapeError(f"the ordinary channel {control} is the massive one: pass another ordinary_dim")
    axes = residual_axes(model, space)
    name = _param_of(space, layer, config.tensor_type)
    score = _score_tensor(scores, name)
    picks = {"massive": pick_entry(model, layer, config.tensor_type, dim, axes, score, space=space),
             "ordinary": pick_entry(model, layer, config.tensor_type, control, axes, score, space=space)}
    check_positions(model, max([getattr(s, "seq_len", 0) for s in corpus.values()], default=0))
    check_corpus(corpus)
    languages = list(corpus)
    inputs = {"corpus": {lang: corpus_key(corpus[lang]) for lang in languages},
              "massive": artifacts.content_hash(massive.to_dict(per_layer=False)), "ordinary_dim": control,
              "scores": None if score is None else artifacts.tensor_digest({name: score})}
    key = artifacts.stage_key(PerturbResult.KIND, model_fingerprint=fingerprint(model), config=config.key_dict(),
                              inputs=inputs)
    ppl_config = PerplexityConfig(batch_size=config.batch_size, chunk_size=config.chunk_size, seed=config.seed,
                                  split=config.split, seq_len=config.seq_len,
                                  tokens_per_language=config.tokens_per_language)

    def compute() -> PerturbResult:
        evaluate = LanguageNLL(model, corpus, ppl_config, total=3 * len(languages), desc="perturb", progress=progress)
        entries = {c: _entry(model, *picks[c], layer, d, config.factor, score)
                   for c, d in (("massive", dim), ("ordinary", control))}
        base = [evaluate(lang) for lang in languages]
        nll = {}
        for c in CONDITIONS:
            with edit_weights(model, one_hot_mask(model, *picks[c]), op="scale", value=config.factor):
                nll[c] = [evaluate(lang) for lang in languages]
        evaluate.close()
        tokens = evaluate.tokens
        meta = artifacts.model_sidecar(
            PerturbResult.KIND, model, languages=languages, token_counts=tokens, config=config.to_dict(),
            inputs=inputs, massive=massive.brief(),
            method="single-parameter perturbation (Zhang et al. 2024): one entry on the top massive channel and "
                   "one on an ordinary channel, each multiplied by factor")
        return PerturbResult(languages, base, nll["massive"], nll["ordinary"], entries, float(config.factor),
                             tokens, meta)

    result = artifacts.run_stage(PerturbResult, out, key, compute, model=model)
    logger.info("%s", result.summary_line())
    return result
