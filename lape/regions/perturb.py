"""Dimension dependence by super weights (Zhang et al. 2024 step 5; Yu et al. 2024; methods.md 3(b), 6(b), 7).

Zhang et al. multiply one weight by 4 and see Chinese perplexity jump to 257.7 on one hidden
dimension ("L1-N2100") and stay at 5.9 on another. Their code is not released and the figure does
not name the matrix or the element. Yu et al. ("The Super Weight in Large Language Models", 2024)
explain such dimensions: a *massive activation* (Sun et al. 2024) on a residual channel ``c`` at
the first token is written by one scalar of an early down-projection, found by the activation
spike it writes, and zeroing that one scalar raises perplexity by orders of magnitude.

For every massive channel ``c`` (:func:`lape.regions.dims.find_massive_dims`):

1. ``l`` = the first decoder layer whose output shows ``c`` as massive (``config.layer`` overrides);
2. the *probe* is the text's first token (BOS) alone at position 0: a causal model's position 0
   attends to nothing else, so this is the BOS state of every sequence of the text;
3. ``a`` = the input of layer ``l``'s down-projection at the probe; the super-weight candidate is
   ``j* = argmax_j |a_j W[c, j]|``, the largest single term of the down-projection's output on
   ``c`` (``sum_j a_j W[c, j]``);
4. the control is the median channel ``o`` of layer ``l`` (by its peak at that layer's output),
   its entry ``j_o = argmax_j |a_j W[o, j]|`` chosen the same way;
5. where a norm sits between a block's writer and the residual add (Gemma 2/3
   ``post_feedforward_layernorm``/``post_attention_layernorm``, OLMo 2; found by its input being
   the writer's output at the probe), the norm of the branch that writes the larger ``|value|``
   on ``c`` sets it: its scale ``s_c = w_c + k`` (``k = 1`` for ``x * (1 + w)``, else 0) caps
   what any down-projection weight can do, ``|y_c| <= sqrt(H) s_c``, so entry ``c`` of that norm
   is a second candidate (entry ``o`` its control);
6. each candidate and control is edited twice, restored bit-exactly after each
   (:func:`lape.weights.edit_weights`): *zero* (``W[c, j*] = 0``; ``s_c = 0``, i.e. ``w_c = -k``,
   lape's ``"remove"``) and *x factor* (``W[c, j*] * 4``; ``s_c * 4``, i.e.
   ``w_c = 4 (w_c + k) - k``).

Each edit gets the mean NLL per language (:class:`lape.evaluate.perplexity.LanguageNLL`) and the
probe's residual stream after every layer on the massive and control channels, beside the
unedited model's. An edit *collapses* the model when its perplexity exceeds ``collapse_ratio``
(10) times the unedited model's (geometric mean over languages); :meth:`RegionPerturb.verdict`
says which do. :func:`region_perturb` returns a :class:`RegionPerturb` (artifact kind ``region_perturb``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..corpora.identity import check_corpus, corpus_key
from ..errors import LapeError
from ..evaluate.perplexity import LanguageNLL, PerplexityConfig
from ..fingerprint import fingerprint
from ..intervals import geomean_interval
from ..models import check_positions
from ..space import ParamSpace
from ..weights import edit_weights
from .importance import ParamImportance
from .massive import MassiveDims, hidden_size
from .superweights import (
    SuperWeight,
    check_massive,
    probe_first_token,
    probe_token,
    scores_key,
    super_weights,
)

logger = logging.getLogger(__name__)
TARGETS = ("weight", "norm")  # a down-projection entry, or a norm's scale entry
KINDS = ("zero", "scale")  # set to 0, or multiply by the factor


@dataclass(frozen=True)
class PerturbConfig(StageConfig):
    """Settings of :func:`perturb`."""

    factor: float = option(4.0, gt=0.0, max=1e3)  # the scale edit (Zhang et al.: x4)
    layer: int | None = option(None, min=0)  # None: each channel's first layer where it is massive
    tensor_type: str | None = None  # the writer whose input is hooked; None: the MLP's down-projection (Yu et al.)
    norms: bool = True  # also edit the scale of the output norm that sets the channel, where there is one
    max_dims: int | None = option(None, min=1)  # None: every massive channel; else the largest ones
    collapse_ratio: float = option(10.0, gt=1.0)  # collapse: PPL above this x the unedited model's
    tokens_per_language: int = option(1024, gt=0)  # valid tokens per language
    seq_len: int = option(256, min=2, max=1 << 16)  # packed sequence length
    batch_size: int = option(4, min=1, max=4096)  # sequences per forward pass
    seed: int = option(0, min=0)  # corpus shuffling
    split: str = "valid"  # held-out split
    chunk_size: int = option(512, min=1, key=False)  # positions whose vocabulary logits exist at once


# --------------------------------------------------------------------------------------------
# edits


@dataclass
class Edit:
    """One weight edit.

    Attributes:
        dim: the massive channel whose candidate this is (also for its controls).
        channel: the channel the edited entry lies on (``dim``, or the control's).
        layer: the edited layer.
        target: ``"weight"`` (a down-projection entry) or ``"norm"`` (a norm's scale entry).
        control: whether it is the control's entry.
        kind: ``"zero"`` or ``"scale"`` (times the factor).
        tensor, index: the edited entry; ``what`` its tensor type relative to the block, without
            ``.weight`` (e.g. ``mlp.down_proj``).
        op, value: the :func:`lape.weights.edit_weights` call that makes it.
        before, after: the parameter's value before and during the edit.
        scale_before, scale_after: the effective value: the weight, or the norm's scale ``w + k``.
    """

    dim: int
    channel: int
    layer: int
    target: str
    control: bool
    kind: str
    tensor: str
    what: str
    index: list[int]
    op: str
    value: float | None
    before: float
    after: float
    scale_before: float
    scale_after: float

    @property
    def key(self) -> tuple[str, tuple[int, ...], str, float | None]:
        """What makes two edits the same change of the model."""
        return self.tensor, tuple(self.index), self.op, self.value

    def label(self, factor: float) -> str:
        """A short name, e.g. ``zero L3 mlp.down_proj[163, 1414]``."""
        verb = "zero" if self.kind == "zero" else f"x{factor:g}"
        tail = " scale" if self.target == "norm" else ""
        return f"{verb} {self.entry}{tail}"

    @property
    def entry(self) -> str:
        """The edited entry, e.g. ``L3 mlp.down_proj[163, 1414]``."""
        return f"L{self.layer} {self.what}[{', '.join(map(str, self.index))}]"

    def describe(self, factor: float) -> str:
        """A phrase for a sentence, e.g. ``zeroing channel 163's super weight L3 mlp.down_proj[163, 1414]``."""
        verb = "zeroing" if self.kind == "zero" else f"x{factor:g} on"
        whose = (f"the control (channel {self.channel})" if self.control else f"channel {self.dim}'s")
        what = "norm scale" if self.target == "norm" else ("weight" if self.control else "super weight")
        return f"{verb} {whose} {what} {self.entry}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Edit:
        d = dict(d)
        d["index"] = [int(i) for i in d["index"]]
        return cls(**d)


def plan_edits(model: nn.Module, candidates: Sequence[SuperWeight], factor: float = 4.0,
               norms: bool = True) -> list[Edit]:
    """The edits of each candidate, in order: its super weight zeroed and scaled, the control
    weight zeroed and scaled, then (``norms`` and a norm sets the channel) the norm scale of the
    channel and of the control zeroed and scaled.

    Zeroing a norm scale writes lape's removal value (``w = -k``: scale 0); scaling it writes
    ``w = factor (w + k) - k`` (scale times ``factor``).

    Example:
        >>> edits = plan_edits(model, super_weights(model, massive, bos), factor=4.0)
        >>> [e.label(4.0) for e in edits][:2]
        ['zero L3 mlp.down_proj[163, 1414]', 'x4 L3 mlp.down_proj[163, 1414]']
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise LapeError(f"factor={factor!r} must be a finite number: the scale edit multiplies by it")
    params = dict(model.named_parameters())
    edits = []
    for sw in candidates:
        what = sw.tensor_type.removesuffix(".weight")
        for control, channel, index in ((False, sw.dim, sw.index), (True, sw.control_dim, sw.control_index)):
            entry = params[sw.tensor].detach()[tuple(index)]
            v, scaled = float(entry), float(entry * factor)  # what lape.weights writes: old * value, in its dtype
            common = dict(dim=sw.dim, channel=channel, layer=sw.layer, target="weight", control=control,
                          tensor=sw.tensor, what=what, index=list(index), before=v, scale_before=v)
            edits.append(Edit(kind="zero", op="zero", value=None, after=0.0, scale_after=0.0, **common))
            edits.append(Edit(kind="scale", op="scale", value=float(factor), after=scaled, scale_after=scaled, **common))
        if norms and sw.norm:
            k, norm = sw.norm_offset, params[sw.norm]
            for control, channel in ((False, sw.dim), (True, sw.control_dim)):
                w = float(norm.detach()[channel])
                new = factor * (w + k) - k  # scale s = w + k times factor
                written = float(torch.tensor(new, dtype=norm.dtype))
                common = dict(dim=sw.dim, channel=channel, layer=sw.layer, target="norm", control=control,
                              tensor=sw.norm, what=(sw.norm_type or sw.norm).removesuffix(".weight"), index=[channel],
                              before=w, scale_before=w + k)
                edits.append(Edit(kind="zero", op="remove", value=None, after=-k, scale_after=0.0, **common))
                edits.append(Edit(kind="scale", op="set", value=new, after=written, scale_after=written + k, **common))
    return edits


def _one_hot(model: nn.Module, name: str, index: Sequence[int]) -> dict[str, torch.Tensor]:
    """``{name: bool mask}`` with only entry ``index`` set, for :func:`lape.weights.edit_weights`."""
    weight = dict(model.named_parameters())[name]
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    mask[tuple(index)] = True
    return {name: mask}


@contextmanager
def applied(model: nn.Module, edit: Edit) -> Iterator[None]:
    """Make ``edit`` for the duration of a ``with`` block; restored bit-exactly on exit."""
    with edit_weights(model, _one_hot(model, edit.tensor, edit.index), op=edit.op, value=edit.value):  # type: ignore[arg-type]
        yield


# --------------------------------------------------------------------------------------------
# the result


def _exp(v: float) -> float:
    if math.isnan(v):
        return math.nan
    return math.exp(v) if v < 700 else math.inf


@dataclass
class RegionPerturb(artifacts.Artifact):
    """Super weights and norm scales of the massive channels, zeroed and scaled: NLL per language
    and the first token's residual stream on each channel, beside the unedited model.

    Attributes:
        languages: evaluated languages.
        base_nll: ``[languages]`` nats/token of the unedited model.
        nll: ``[edits][languages]`` with each edit made.
        candidates: one :class:`SuperWeight` per massive channel.
        edits: the :class:`Edit` list (:func:`plan_edits` order).
        channels: the channels whose probe values are kept (massive ones, then controls).
        base_bos: ``[layers][channels]``: the residual stream at the probe after each layer.
        bos: ``[edits][layers][channels]``: the same with each edit made.
        factor: the scale edit's factor.
        collapse_ratio: an edit collapses the model above this PPL ratio.
        probe: the probe token id.
        tokens: evaluated tokens per language.
    """

    languages: list[str]
    base_nll: list[float]
    nll: list[list[float]]
    candidates: list[SuperWeight]
    edits: list[Edit]
    channels: list[int]
    base_bos: list[list[float]]
    bos: list[list[list[float]]]
    factor: float
    collapse_ratio: float
    probe: int
    tokens: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "region_perturb"
    DESCRIPTION: ClassVar[str] = "super-weight perturbation"
    TENSORS: ClassVar[tuple[str, ...]] = ("base_nll", "nll", "base_bos", "bos")

    # --- figures -------------------------------------------------------------------------------
    def ppl_ratios(self, i: int) -> list[float]:
        """Per language, PPL with edit ``i`` over the unedited PPL."""
        return [_exp(v - b) for v, b in zip(self.nll[i], self.base_nll)]

    def ppl_ratio(self, i: int) -> float:
        """Edit ``i``'s PPL over the unedited PPL, geometric mean over languages:
        ``exp(mean_lang (NLL_edit - NLL_base))``."""
        d = [v - b for v, b in zip(self.nll[i], self.base_nll) if not (math.isnan(v) or math.isnan(b))]
        return _exp(sum(d) / len(d)) if d else math.nan

    def collapses(self, i: int) -> bool:
        """Whether edit ``i`` raises the perplexity above ``collapse_ratio`` x the unedited model's."""
        r = self.ppl_ratio(i)
        return not math.isnan(r) and r > self.collapse_ratio

    def bos_value(self, channel: int, layer: int, edit: int | None = None) -> float:
        """The residual stream at the probe on ``channel`` after ``layer`` (``edit=None``: unedited)."""
        if channel not in self.channels:
            raise LapeError(f"channel {channel} was not kept: use one of {', '.join(map(str, self.channels))}")
        k = self.channels.index(channel)
        return (self.base_bos if edit is None else self.bos[edit])[layer][k]

    def candidate(self, dim: int) -> SuperWeight:
        """The candidate of massive channel ``dim``."""
        found = [c for c in self.candidates if c.dim == dim]
        if not found:
            raise LapeError(f"channel {dim} is not a massive channel here: use one of "
                            f"{', '.join(str(c.dim) for c in self.candidates)}")
        return found[0]

    def edit_rows(self) -> list[dict[str, Any]]:
        """One row per edit: what was changed, the PPL ratio (geometric mean over the languages, with
        its 95% bootstrap interval over them) and the probe's value on the massive
        channel after the edited layer and after the last layer, unedited and edited."""
        rows = []
        last = len(self.base_bos) - 1
        for i, e in enumerate(self.edits):
            ratios = [r for r in self.ppl_ratios(i) if not math.isnan(r)]
            geo = geomean_interval(ratios)
            rows.append({
                "edit": e.label(self.factor), "dim": e.dim, "channel": e.channel, "layer": e.layer,
                "target": e.target, "control": e.control, "kind": e.kind, "tensor": e.tensor, "index": list(e.index),
                "before": e.before, "after": e.after, "scale_before": e.scale_before, "scale_after": e.scale_after,
                "ppl_ratio": self.ppl_ratio(i), "ppl_ratio_low": geo.low, "ppl_ratio_high": geo.high,
                "ppl_ratio_min": min(ratios, default=math.nan),
                "ppl_ratio_max": max(ratios, default=math.nan), "collapses": self.collapses(i),
                "bos_layer_base": self.bos_value(e.dim, e.layer), "bos_layer": self.bos_value(e.dim, e.layer, i),
                "bos_last_base": self.bos_value(e.dim, last), "bos_last": self.bos_value(e.dim, last, i)})
        return rows

    # --- sentences -----------------------------------------------------------------------------
    def verdict(self) -> str:
        """Which edits collapse the model and which do not, with their PPL ratios, and what zeroing
        each super weight does to its channel at the first token."""
        n, L = len(self.edits), len(self.languages)
        rule = (f"PPL above {self.collapse_ratio:g}x the unedited model's, geometric mean over {L} "
                f"language{'s' if L != 1 else ''}")

        def item(i: int) -> str:
            return f"{self.edits[i].describe(self.factor)} (x{ratio_text(self.ppl_ratio(i))})"

        bad = [i for i in range(n) if self.collapses(i)]
        good = [i for i in range(n) if i not in bad]
        if not bad:
            first = f"No edit collapses the model ({rule}): " + "; ".join(item(i) for i in good) + "."
        else:
            first = (f"{len(bad)} of {n} edit{'s' if n != 1 else ''} collapse{'s' if n == 1 else ''} the model "
                     f"({rule}): " + "; ".join(item(i) for i in bad) + ".")
            if good:
                rest = "The other edit does not" if len(good) == 1 else f"The other {len(good)} do not"
                first += f" {rest}: " + "; ".join(item(i) for i in good) + "."
        last = len(self.base_bos) - 1
        spikes = []
        for i, e in enumerate(self.edits):
            if e.target == "weight" and not e.control and e.kind == "zero":
                b, v = self.bos_value(e.dim, last), self.bos_value(e.dim, last, i)
                bl, vl = self.bos_value(e.dim, e.layer), self.bos_value(e.dim, e.layer, i)
                spikes.append(f"zeroing channel {e.dim}'s super weight moves its first-token value after layer "
                              f"{e.layer} from {bl:.4g} to {vl:.4g} ({_share(vl, bl)}) and after the last layer "
                              f"from {b:.4g} to {v:.4g} ({_share(v, b)})")
        if not spikes:
            return first
        spike = "; ".join(spikes)
        return f"{first} {spike[0].upper()}{spike[1:]}."

    def summary_line(self) -> str:
        """One line: the candidates and how many edits collapse the model."""
        picks = ", ".join(f"channel {c.dim}: L{c.layer} [{', '.join(map(str, c.index))}]" for c in self.candidates)
        bad = [self.edits[i].label(self.factor) for i in range(len(self.edits)) if self.collapses(i)]
        worst = max(range(len(self.edits)), key=lambda i: (self.ppl_ratio(i) if not math.isnan(self.ppl_ratio(i))
                                                          else -1.0), default=None)
        if bad:
            tail = (f"{len(bad)} of {len(self.edits)} edits collapse the model (PPL > {self.collapse_ratio:g}x): "
                    + ", ".join(bad))
        else:
            tail = f"no edit of {len(self.edits)} collapses the model (PPL > {self.collapse_ratio:g}x)"
        top = (f"; largest PPL ratio x{ratio_text(self.ppl_ratio(worst))} ({self.edits[worst].label(self.factor)})"
               if worst is not None else "")
        return f"super weights ({picks}): {tail}{top} ({len(self.languages)} languages)"

    # --- artifact ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"base_nll": torch.tensor(self.base_nll, dtype=torch.float64),
                "nll": torch.tensor(self.nll, dtype=torch.float64).reshape(len(self.edits), len(self.languages)),
                "base_bos": torch.tensor(self.base_bos, dtype=torch.float64),
                "bos": torch.tensor(self.bos, dtype=torch.float64).reshape(len(self.edits), len(self.base_bos),
                                                                           len(self.channels))}

    def payload(self) -> dict[str, Any]:
        return {"languages": self.languages, "candidates": [c.to_dict() for c in self.candidates],
                "edits": [e.to_dict() for e in self.edits], "channels": self.channels, "factor": self.factor,
                "collapse_ratio": self.collapse_ratio, "probe": self.probe, "tokens": self.tokens,
                "ppl_ratio": [self.ppl_ratio(i) for i in range(len(self.edits))],
                "collapses": [self.collapses(i) for i in range(len(self.edits))], "verdict": self.verdict()}

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        nll = [{"edit": "none" if i is None else self.edits[i].label(self.factor), "language": lang,
                "tokens": self.tokens.get(lang), "nll": v, "ppl": _exp(v),
                "delta_nll": v - self.base_nll[k]}
               for i, row in [(None, self.base_nll), *enumerate(self.nll)] for k, (lang, v) in
               enumerate(zip(self.languages, row))]
        bos = [{"edit": "none" if i is None else self.edits[i].label(self.factor), "layer": layer,
                **{f"h_{c}": states[layer][k] for k, c in enumerate(self.channels)}}
               for i, states in [(None, self.base_bos), *enumerate(self.bos)] for layer in range(len(self.base_bos))]
        return {"superweights": [c.to_dict() for c in self.candidates], "perturb_edits": self.edit_rows(),
                "perturb_nll": nll, "perturb_bos": bos}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], r: Any) -> RegionPerturb:
        return cls(list(r["languages"]), tensors["base_nll"].tolist(), tensors["nll"].tolist(),
                   [SuperWeight.from_dict(c) for c in r["candidates"]], [Edit.from_dict(e) for e in r["edits"]],
                   [int(c) for c in r["channels"]], tensors["base_bos"].tolist(), tensors["bos"].tolist(),
                   float(r["factor"]), float(r["collapse_ratio"]), int(r["probe"]),
                   {k: int(v) for k, v in r["tokens"].items()}, meta)

    def validate(self) -> None:
        n, e, layers = len(self.languages), len(self.edits), len(self.base_bos)
        if len(self.base_nll) != n or len(self.nll) != e or any(len(row) != n for row in self.nll):
            raise LapeError(f"the perturbation result does not hold {n} NLL values per edit: the artifact was "
                            "edited or damaged; re-run lape regions perturb")
        if len(self.bos) != e or any(len(s) != layers or any(len(x) != len(self.channels) for x in s)
                                     for s in self.bos):
            raise LapeError("the perturbation result's first-token states do not match its edits and channels: the "
                            "artifact was edited or damaged; re-run lape regions perturb")
        if any(v < 0 for v in [*self.base_nll, *(x for row in self.nll for x in row)] if not math.isnan(v)):
            raise LapeError("the perturbation result holds a negative NLL: the artifact was edited or damaged; "
                            "re-run lape regions perturb")
        if any(ed.dim not in self.channels or ed.channel not in self.channels for ed in self.edits):
            raise LapeError("an edit's channel has no first-token values: the artifact was edited or damaged; "
                            "re-run lape regions perturb")


def ratio_text(r: float) -> str:
    """A perplexity ratio as text: ``?`` when unknown, whole numbers from 100, else 3 digits."""
    if math.isnan(r):
        return "?"
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


def _share(v: float, base: float) -> str:
    return f"{100 * v / base:.2g}% of it" if base else "from 0"


# --------------------------------------------------------------------------------------------
# the stage


def _score_of(scores: Any, name: str, index: Sequence[int], required: bool) -> tuple[float | None, float | None]:
    """The importance of one entry (``sum_l |S_l|``) and the share of its tensor scored higher."""
    if scores is None:
        return None, None
    if isinstance(scores, ParamImportance):
        tensor = scores.scores[name].abs().sum(0) if name in scores.scores else None
    elif isinstance(scores, Mapping):
        tensor = scores.get(name)
    else:
        raise LapeError(f"scores must be a ParamImportance or {{parameter name: tensor}}, got {type(scores).__name__}")
    if tensor is None:
        if required:
            raise LapeError(f"scores have no tensor {name}: pass an importance covering the down-projection")
        return None, None
    value = tensor[tuple(index)]
    return float(value), float((tensor > value).sum()) / tensor.numel()


def region_perturb(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    massive: MassiveDims,
    config: PerturbConfig = PerturbConfig(),
    *,
    scores: ParamImportance | Mapping[str, torch.Tensor] | None = None,
    ordinary_dim: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> RegionPerturb:
    """Zero and scale each massive channel's super weight (and the norm scale that sets the
    channel), against a median channel's; NLL per language and the first token's residual stream.

    Args:
        model: the model ``massive`` was found on; its weights are restored bit-exactly.
        corpus: ``{language: sequences}`` of the held-out split (see :func:`lape.load_corpus`);
            its first token (BOS) is the probe.
        massive: from :func:`lape.regions.dims.find_massive_dims`.
        config: factor, layer, tensor type, norms, collapse threshold and evaluation settings.
        scores: an importance (:class:`ParamImportance`, ``sum_l |S_l|``, or ``{parameter name:
            weight-shaped score}``): each candidate's score and rank in its tensor are reported
            (e.g. whether the super weight is in the core region); it does not pick anything.
        ordinary_dim: the control channel (default: the median channel of each candidate's layer).
        out: a folder to save the result into; a result there made from the same model, text,
            massive channels, scores and settings is returned without recomputation.
        progress: show a progress bar.

    Returns:
        :class:`RegionPerturb`.

    Raises:
        LapeError: no massive channel, massive dims of another model, a layer or tensor type the
            model does not have, a control channel equal to a massive one or outside the model,
            or a language without text.

    Example:
        >>> massive = find_massive_dims(model, valid)
        >>> res = region_perturb(model, valid, massive, PerturbConfig(tokens_per_language=256))
        >>> print(res.verdict())
    """
    space = ParamSpace.of(model)
    check_massive(massive, hidden_size(model))
    check_positions(model, max([getattr(s, "seq_len", 0) for s in corpus.values()], default=0))
    check_corpus(corpus)
    token = probe_token(corpus)
    languages = list(corpus)
    # the key needs no forward pass: the candidates are a function of the model (fingerprint), the probe token, the
    # massive channels and the settings, and their scores of the importance (keyed by its content)
    inputs = {"corpus": {lang: corpus_key(corpus[lang]) for lang in languages},
              "massive": artifacts.content_hash(massive.to_dict()), "ordinary_dim": ordinary_dim, "probe": token,
              "scores": None if scores is None else scores_key(scores)}
    key = artifacts.stage_key(RegionPerturb.KIND, model_fingerprint=fingerprint(model), config=config.key_dict(),
                              inputs=inputs)
    ppl_config = PerplexityConfig(batch_size=config.batch_size, chunk_size=config.chunk_size, seed=config.seed,
                                  split=config.split, seq_len=config.seq_len,
                                  tokens_per_language=config.tokens_per_language)

    def compute() -> RegionPerturb:
        candidates = super_weights(model, massive, token, layer=config.layer, tensor_type=config.tensor_type,
                                   ordinary_dim=ordinary_dim, max_dims=config.max_dims, space=space)
        for sw in candidates:
            sw.score, sw.score_rank = _score_of(scores, sw.tensor, sw.index, required=True)
            if sw.norm:
                sw.norm_score, sw.norm_score_rank = _score_of(scores, sw.norm, [sw.dim], required=False)
        edits = plan_edits(model, candidates, config.factor, config.norms)
        channels = list(dict.fromkeys([*(c.dim for c in candidates), *(c.control_dim for c in candidates)]))
        unique = list(dict.fromkeys(e.key for e in edits))
        evaluate = LanguageNLL(model, corpus, ppl_config, total=(1 + len(unique)) * len(languages), desc="perturb",
                               progress=progress)

        def probe_values() -> list[list[float]]:
            states, _ = probe_first_token(model, space, token)
            return states[:, channels].tolist()

        base = [evaluate(lang) for lang in languages]
        base_bos = probe_values()
        done: dict[Any, tuple[list[float], list[list[float]]]] = {}
        for e in edits:
            if e.key not in done:
                with applied(model, e):
                    done[e.key] = ([evaluate(lang) for lang in languages], probe_values())
        evaluate.close()
        meta = artifacts.model_sidecar(
            RegionPerturb.KIND, model, languages=languages, token_counts=evaluate.tokens, config=config.to_dict(),
            inputs=inputs, massive=massive.brief(), probe_token=token,
            method="super weights (Yu et al. 2024) for Zhang et al.'s dimension dependence: per massive channel c, "
                   "j* = argmax_j |a_j W_down[c, j]| at the first token in the layer where c becomes massive, and "
                   "the output norm's scale of c where one sets it; each zeroed and scaled, against the median "
                   "channel's")
        return RegionPerturb(languages, base, [done[e.key][0] for e in edits], candidates, edits, channels, base_bos,
                             [done[e.key][1] for e in edits], float(config.factor), float(config.collapse_ratio),
                             token, dict(evaluate.tokens), meta)

    result = artifacts.run_stage(RegionPerturb, out, key, compute, model=model)
    logger.info("%s", result.summary_line())
    return result
