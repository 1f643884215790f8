"""Change weights: edits with a bit-exact restore, and freezing entries in a training loop.

:func:`patch_weights` changes the masked entries of named parameters in place and returns a
:class:`WeightPatch` whose :meth:`~WeightPatch.restore` writes the saved originals back;
:func:`edit_weights` is the same as a ``with`` block that restores on exit, also after an
exception. Only the masked entries are saved (``param[mask].clone()``), so removing a 1% region
costs 1% of the model's memory, not a copy of every tensor.

Ops:

* ``"zero"``: set to 0 (Zhang et al.'s "removal" of a region);
* ``"scale"``: multiply by ``value`` (single-parameter perturbation, e.g. x4);
* ``"set"``: set to ``value``;
* ``"remove"``: set to :func:`removal_value`, i.e. 0, except -1 for the weights of norms that
  compute ``x * (1 + w)`` (Gemma 1-3 RMSNorm). Zeroing such a weight leaves the scale at 1, so
  it removes nothing; -1 makes the scale 0, which is what zeroing does for every other tensor.

:func:`freeze` keeps masked entries unchanged through optimizer steps (Zhang et al.'s frozen
further pre-training): gradient hooks zero their gradients, and
:meth:`FrozenWeights.after_step` writes the saved values back to undo what weight decay (AdamW)
or momentum from earlier steps still moves.

Masks are ``{parameter name: bool tensor of the parameter's shape}`` (names as in
``model.named_parameters()``), e.g. ``regions.mask("core")`` or ``space.neuron_mask(layer, i)``,
or a :class:`~lape.masks.ParamRegions` with ``label=``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import LapeError
from .masks import ParamRegions

Op = Literal["zero", "scale", "set", "remove"]
OPS: tuple[str, ...] = ("zero", "scale", "set", "remove")
Masks = Mapping[str, torch.Tensor] | ParamRegions


@dataclass
class _Entry:
    """One masked parameter and its masked entries' values before the edit, in mask order."""

    name: str
    param: nn.Parameter
    mask: torch.Tensor
    saved: torch.Tensor

    def put_back(self) -> None:
        with torch.no_grad():
            self.param.index_put_((self.mask,), self.saved)


class WeightPatch:
    """Weight edits in force; :meth:`restore` undoes them bit-exactly (once; later calls do nothing).

    Attributes:
        names: the edited parameters.
    """

    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = entries
        self.names = [e.name for e in entries]

    def restore(self) -> None:
        """Write the saved entries back, last edit first (so aliased tensors end up original)."""
        while self._entries:
            self._entries.pop().put_back()


def patch_weights(model: nn.Module, masks: Masks, op: Op = "zero", value: float | None = None,
                  *, label: str | None = None) -> WeightPatch:
    """Edit the masked entries of named parameters in place until ``.restore()``.

    Prefer :func:`edit_weights`, which cannot forget to restore.

    Args:
        model: the model.
        masks: ``{parameter name: bool mask of its shape}``, or a :class:`ParamRegions` with ``label``.
        op: ``"zero"``, ``"scale"`` (times ``value``), ``"set"`` (to ``value``) or ``"remove"``
            (0, or -1 for ``x * (1 + w)`` norm weights; see :func:`removal_value`).
        value: the factor or value of ``"scale"`` and ``"set"``.
        label: the region to use when ``masks`` is a :class:`ParamRegions`.

    Returns:
        The handle; ``handle.restore()`` puts every original value back.

    Raises:
        LapeError: an unknown op, a missing/NaN value, an unknown parameter name, a mask that is
            not bool or not of the parameter's shape. Nothing is changed then.

    Example:
        >>> handle = patch_weights(model, regions.mask("core"))
        >>> ppl = perplexity(model, texts)
        >>> handle.restore()
    """
    resolved = _resolve(model, masks, label)
    fills = _fill_values(model, resolved, op, value)
    entries: list[_Entry] = []
    try:
        with torch.no_grad():
            for (name, param, mask), fill in zip(resolved, fills):
                old = param[mask]  # boolean indexing copies: only the masked entries are saved
                entries.append(_Entry(name, param, mask, old))
                if op == "scale":
                    param.index_put_((mask,), old * value)
                else:
                    param.masked_fill_(mask, fill)
    except BaseException:
        WeightPatch(entries).restore()
        raise
    return WeightPatch(entries)


@contextmanager
def edit_weights(model: nn.Module, masks: Masks, op: Op = "zero", value: float | None = None,
                 *, label: str | None = None) -> Iterator[WeightPatch]:
    """Edit weights for the duration of a ``with`` block; restored bit-exactly on exit, also after
    an exception. Arguments as in :func:`patch_weights`; edits nest.

    Example:
        >>> with edit_weights(model, regions.mask("core")):            # remove the core region
        ...     ppl = perplexity(model, texts)
        >>> with edit_weights(model, space.neuron_mask(1, [7]), op="scale", value=4.0):
        ...     out = model.generate(ids, max_new_tokens=20)
    """
    handle = patch_weights(model, masks, op, value, label=label)
    try:
        yield handle
    finally:
        handle.restore()


def removal_value(model: nn.Module, name: str) -> float:
    """The value that removes parameter ``name``: -1 for the weight of a norm computing
    ``x * (1 + w)`` (Gemma RMSNorm), else 0.

    The norm style is read off the module's behaviour, not its name: with its weight set to 0,
    a ``x * w`` norm gives the same output for every input (0, or its bias), while a
    ``x * (1 + w)`` norm still passes the normalised input through.

    Args:
        model: the model.
        name: a parameter name as in ``model.named_parameters()``.

    Example:
        >>> removal_value(gemma, "model.layers.0.input_layernorm.weight")
        -1.0
    """
    return _removal_value(model, dict(model.named_parameters(remove_duplicate=False)), name)


def _removal_value(model: nn.Module, params: Mapping[str, nn.Parameter], name: str) -> float:
    if name not in params:
        raise LapeError(f"{type(model).__name__} has no parameter {name!r}: see model.named_parameters()")
    module_path, _, attr = name.rpartition(".")
    module = model.get_submodule(module_path)
    weight = params[name]
    if attr != "weight" or weight.dim() != 1 or "Norm" not in type(module).__name__:
        return 0.0
    return -1.0 if _passes_input_at_zero(module, weight) else 0.0


def _passes_input_at_zero(norm: nn.Module, weight: torch.Tensor) -> bool:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, weight.shape[0], generator=g).to(weight.device, weight.dtype)
    zero = {"weight": torch.zeros_like(weight)}
    with torch.no_grad():
        out = torch.func.functional_call(norm, zero, (x,))
    return not torch.allclose(out[0], out[1])


# --- freezing ------------------------------------------------------------------------------------

class FrozenWeights:
    """Masked entries held fixed in training; also a context manager that calls :meth:`remove`.

    The gradient hooks zero the masked entries' gradients, so plain SGD and Adam(W) without
    weight decay leave them exactly unchanged. Weight decay (AdamW's ``p -= lr * wd * p``) and
    momentum built up before freezing still move them: call :meth:`after_step` after every
    ``optimizer.step()`` to write the saved values back, as Zhang et al.'s training loop does.
    """

    def __init__(self, entries: list[_Entry], hooks: list[RemovableHandle]) -> None:
        self._entries = entries
        self._hooks = hooks
        self.names = [e.name for e in entries]

    def after_step(self) -> None:
        """Put the frozen entries back to their values at freezing time (bit-exact)."""
        for e in self._entries:
            e.put_back()

    def remove(self) -> None:
        """Remove the gradient hooks (gradients flow again); values are left as they are."""
        while self._hooks:
            self._hooks.pop().remove()

    def __enter__(self) -> FrozenWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def freeze(model: nn.Module, masks: Masks, *, label: str | None = None) -> FrozenWeights:
    """Keep the masked entries of named parameters fixed through optimizer steps.

    Args:
        model: the model being trained.
        masks: ``{parameter name: bool mask of its shape}``, or a :class:`ParamRegions` with ``label``.
        label: the region to use when ``masks`` is a :class:`ParamRegions`.

    Returns:
        The handle: ``.after_step()`` after each optimizer step, ``.remove()`` (or the end of a
        ``with`` block) to unfreeze.

    Example:
        >>> with freeze(model, regions, label="core") as frozen:
        ...     for batch in batches:
        ...         model(**batch).loss.backward()
        ...         optimizer.step(); optimizer.zero_grad()
        ...         frozen.after_step()   # undo weight decay on the frozen entries
    """
    entries: list[_Entry] = []
    hooks: list[RemovableHandle] = []
    try:
        for name, param, mask in _resolve(model, masks, label):
            entries.append(_Entry(name, param, mask, param.detach()[mask]))
            if param.requires_grad:  # no gradient, no hook: the optimizer skips it anyway
                # return a new tensor: autograd hooks must not edit the incoming gradient in place
                hooks.append(param.register_hook(lambda grad, mask=mask: grad.masked_fill(mask, 0)))
    except BaseException:
        FrozenWeights(entries, hooks).remove()
        raise
    return FrozenWeights(entries, hooks)


# --- checks --------------------------------------------------------------------------------------

def _resolve(model: nn.Module, masks: Masks, label: str | None) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
    """Check every mask before anything changes: ``(name, parameter, mask on its device)``."""
    if isinstance(masks, ParamRegions):
        if label is None:
            raise LapeError(f"which region? pass label= (one of {', '.join(masks.labels)})")
        masks.check_model(model)
        masks = masks.mask(label)
    elif label is not None:
        raise LapeError("label= only applies to ParamRegions: pass regions.mask(label) or the regions")
    if not isinstance(masks, Mapping):
        raise LapeError(f"masks must be {{parameter name: bool tensor}} or ParamRegions, got {type(masks).__name__}")
    # remove_duplicate=False: tied weights are reachable under each of their names
    params = dict(model.named_parameters(remove_duplicate=False))
    resolved = []
    for name, mask in masks.items():
        if name not in params:
            raise LapeError(f"{type(model).__name__} has no parameter {name!r}: use names from "
                            "model.named_parameters() (or ParamSpace.of(model).names())")
        param = params[name]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise LapeError(f"the mask of {name} is {got}: pass a bool tensor (e.g. scores > threshold)")
        if mask.shape != param.shape:
            raise LapeError(f"the mask of {name} has shape {tuple(mask.shape)} but the parameter has "
                            f"{tuple(param.shape)}: use masks made for this model")
        resolved.append((name, param, mask.to(param.device)))
    return resolved


def _fill_values(model: nn.Module, resolved: list[tuple[str, nn.Parameter, torch.Tensor]],
                 op: str, value: float | None) -> list[float]:
    """The value written into each masked entry (for ``"scale"``: unused, ``value`` multiplies)."""
    if op not in OPS:
        raise LapeError(f"unknown weight edit op={op!r}: use one of {', '.join(OPS)}")
    if op in ("scale", "set"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise LapeError(f'op="{op}" needs a number value= (not NaN), got {value!r}')
        return [float(value)] * len(resolved)
    if value is not None:
        raise LapeError(f'op="{op}" takes no value= (got {value}): use op="set" to write a value')
    if op == "remove":
        params = dict(model.named_parameters(remove_duplicate=False))  # once, not once per tensor
        return [_removal_value(model, params, name) for name, _, _ in resolved]
    return [0.0] * len(resolved)
