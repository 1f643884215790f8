"""Frozen further pre-training: does freezing the core region slow forgetting? (Zhang et al.,
ACL 2024, step 6; `region_freeze_train.py`).

Each setting of ``config.freeze`` trains the model on one language (``train_language``) for
``config.steps`` optimizer steps from the same original weights, with one region held fixed:

* ``"none"``: nothing frozen (plain further pre-training, the forgetting baseline);
* a region label (``"core"``, ``"random"``, ``"bottom"``, a language, ...): that region's
  entries of every non-norm decoder-block tensor are frozen the reference's way
  (:func:`lape.weights.freeze`): their gradients are zeroed and, after **every** optimizer step,
  their values are written back (:meth:`~lape.weights.FrozenWeights.after_step`, the reference's
  ``theta <- theta * ~mask + theta_frozen``), so they stay bit-identical even under AdamW's
  weight decay. Norm weights are never frozen (the reference skips names containing
  ``'norm'``; here :attr:`lape.space.ParamInfo.is_norm`, which also covers GPT-2's ``ln_1``).

The mean NLL (nats/token) of every language of ``eval_corpus`` is measured once before training
(shared by all settings) and after each setting's training (:func:`lape.evaluate.perplexity.corpus_nll`);
forgetting is the NLL rise of the languages that were not trained on.

**What is trained.** An ordinary :class:`torch.optim.AdamW` over the decoder-block parameters
(:meth:`lape.space.ParamSpace.names`, norms included, as the reference trains everything);
embeddings, the final norm and the LM head stay fixed. That keeps a CPU run affordable
(the embeddings are most of a small multilingual model's parameters) and avoids mixing input
and output with tied embeddings, where a trained output matrix would also be a changed input
embedding. Biases (and ``LayerNorm.weight``, a name no model here has) get no weight decay, as
in the reference's ``get_optimizer_grouped_parameters``; so LLaMA-style norm weights are decayed,
as they were there.

**The loss** is the causal-LM loss of :mod:`lape.regions.importance`: the mean next-token cross
entropy over the real targets of a batch, in float32, with only ``chunk_size`` positions'
vocabulary logits at once (:func:`~lape.regions.importance.batch_gradients`). The loss logged per
step is that batch's loss at the weights its gradient is taken at. Gradients are clipped to a global norm of
``grad_clip``; frozen entries have zero gradient, so, unlike DeepSpeed in the reference, they do
not count towards that norm. The model runs in eval mode (no dropout), so a run is deterministic.

**Schedule.** Linear warm-up over ``warmup_steps`` steps, then cosine decay to 0 at step
``steps`` (the reference: DeepSpeed-Chat's cosine schedule with 100 warm-up steps over one
epoch). Step ``s`` (from 0) uses ``lr * (s + 1) / (warmup_steps + 1)`` during warm-up, then
``lr * (1 + cos(pi * (s - warmup_steps) / (steps - warmup_steps))) / 2``; unlike Hugging Face's
scheduler no step runs at learning rate 0, which a 20-step run cannot spare.

**Data.** The first ``steps * batch_size`` sequences of ``train_corpus[train_language]`` (fewer
if the stream is shorter), visited in an order drawn from ``seed``: every pass over them is a
new permutation, so a short stream is cycled. Every setting sees the same batches.

**The model is not changed**: the decoder-block parameters are copied before training and
written back after each setting, in a ``finally`` (also after an exception or ``Ctrl-C``), with
their ``requires_grad`` flags, ``.grad`` and train/eval mode. The copy costs one model's decoder
blocks of memory, AdamW's moments two more.

Corpus fields (``seq_len``, ``eval_tokens_per_language``) say how the CLI builds the streams;
:func:`continued_pretraining` runs the sequences it is given.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..activations import MAX_SEQ_LEN, check_corpus, corpus_key
from ..config import StageConfig, option
from ..corpora import batches
from ..errors import LapeError
from ..evaluate.perplexity import PerplexityConfig, corpus_nll
from ..files import atomic_write_bytes
from ..masks import ParamRegions
from ..models import check_positions, fingerprint, input_device
from ..space import ParamSpace
from ..weights import freeze
from .importance import batch_gradients, gradients_for

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

NONE = "none"  # the setting that freezes nothing
NO_DECAY = ("bias", "LayerNorm.weight")  # the reference's no-decay name parts
METHOD = "frozen further pre-training (Zhang et al. 2024, step 6)"


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Settings of :func:`continued_pretraining`; defaults follow the released freeze-training
    script (lr, betas, weight decay, clipping) scaled down to a CPU run (steps, batch, length)."""

    train_language: str = ""  # the language trained on (the paper: Arabic; the code: Chinese); required
    freeze: tuple[str, ...] = (NONE, "core", "random")  # settings run side by side: "none" or a region label
    steps: int = option(20, min=1, max=10_000_000)  # optimizer steps per setting (paper: 200k samples / 256)
    batch_size: int = option(4, min=1, max=4096)  # sequences per step (paper: 256, 2 x 8 GPUs x GAS 16)
    seq_len: int = option(256, min=2, max=MAX_SEQ_LEN)  # packed sequence length of the streams (paper: 512)
    lr: float = option(5e-5, gt=0.0, max=1.0)  # peak learning rate (paper: 5e-5; a few steps need more)
    betas: tuple[float, float] = option((0.9, 0.95), min=0.0, max=0.999999)  # AdamW betas (paper)
    weight_decay: float = option(0.001, min=0.0, max=1.0)  # AdamW decoupled weight decay (paper)
    warmup_steps: int = option(2, min=0)  # linear warm-up steps before the cosine decay (paper: 100)
    grad_clip: float = option(1.0, min=0.0)  # global gradient-norm clip (paper: 1.0); 0 turns it off
    eval_tokens_per_language: int = option(1024, gt=0)  # valid tokens per evaluated language
    seed: int = option(0, min=0)  # the order of the training sequences
    chunk_size: int = option(512, min=1, key=False)  # positions whose vocabulary logits exist at once

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.betas) != 2:
            raise LapeError(f"train setting betas (--betas) is {list(self.betas)}: give two numbers, e.g. 0.9 0.95")
        if not self.freeze:
            raise LapeError('train setting freeze (--freeze) is empty: give at least one, e.g. "none core random"')
        if len(set(self.freeze)) != len(self.freeze):
            raise LapeError(f"train setting freeze (--freeze) repeats a setting: {list(self.freeze)}; "
                            "give each once")


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step ``step`` (from 0): linear warm-up, then cosine to 0.

    Example:
        >>> [round(learning_rate(TrainConfig(lr=1.0, steps=4, warmup_steps=1), s), 3) for s in range(4)]
        [0.5, 1.0, 0.75, 0.25]
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    progress = (step - config.warmup_steps) / (config.steps - config.warmup_steps)  # in [0, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def training_batches(stream: Iterable[Any], config: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``config.steps`` training batches ``(input_ids [B, T], attention_mask [B, T])``.

    The first ``steps * batch_size`` sequences of ``stream`` are kept; each pass over them
    visits them in a new order drawn from ``config.seed``, so a short stream is cycled.

    Raises:
        LapeError: the stream yields no sequence.
    """
    need = config.steps * config.batch_size
    pool = []
    for seq in stream:
        pool.append(seq)
        if len(pool) == need:
            break
    if not pool:
        raise LapeError(f"the training language {config.train_language!r} has no text: check its train split")
    g = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    while len(order) < need:  # one permutation per pass
        order += torch.randperm(len(pool), generator=g).tolist()
    chosen = [pool[i] for i in order[:need]]
    return list(batches(chosen, config.batch_size))


# --------------------------------------------------------------------------------------------
# The result


@dataclass
class ForgettingResult(artifacts.Artifact):
    """NLL per language before and after further pre-training, per freezing setting.

    Attributes:
        settings: ``"none"`` or the frozen region's label, in run order.
        languages: evaluated languages (column order).
        train_language: the language trained on.
        before_nll: ``[languages]`` nats/token of the original model.
        after_nll: ``[settings][languages]`` nats/token after the setting's training.
        losses: ``[settings][steps]`` training loss (nats/token) of each step's batch, before
            its optimizer step.
        frozen_params: per setting, the number of frozen parameter entries.
        tokens: evaluated tokens per language.
        meta: the sidecar (config, learning rate per step, training tokens, regions).

    Example:
        >>> res = ForgettingResult.load("runs/demo/forgetting")
        >>> res.delta_nll()[res.settings.index("core")]
    """

    settings: list[str]
    languages: list[str]
    train_language: str
    before_nll: list[float]
    after_nll: list[list[float]]
    losses: list[list[float]]
    frozen_params: list[int]
    tokens: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "forgetting"
    DESCRIPTION: ClassVar[str] = "forgetting experiment"

    def delta_nll(self) -> list[list[float]]:
        """``[settings][languages]``: NLL after minus before (positive: forgotten)."""
        return [[a - b for a, b in zip(row, self.before_nll)] for row in self.after_nll]

    def forgetting_rows(self) -> list[dict[str, Any]]:
        """One row per setting: frozen entries, NLL change per language, on the trained language
        (NaN when it is not evaluated) and the mean over the other languages (NaN without any),
        and the last step's loss."""
        rows = []
        for s, setting in enumerate(self.settings):
            delta = dict(zip(self.languages, self.delta_nll()[s]))
            others = [v for lang, v in delta.items() if lang != self.train_language]
            rows.append({"setting": setting, "frozen_params": self.frozen_params[s], **delta,
                         "trained_delta_nll": delta.get(self.train_language, math.nan),
                         "others_mean_delta_nll": sum(others) / len(others) if others else math.nan,
                         "final_loss": self.losses[s][-1] if self.losses[s] else math.nan})
        return rows

    def summary_line(self) -> str:
        """One line that says exactly what it compares."""
        rows = self.forgetting_rows()
        steps = len(self.losses[0]) if self.losses else 0
        others = ", ".join(f"{r['setting']} {r['others_mean_delta_nll']:+.3f}" for r in rows)
        own = ", ".join(f"{r['setting']} {r['trained_delta_nll']:+.3f}" for r in rows)
        n_other = len(self.languages) - (self.train_language in self.languages)
        return (f"after {steps} steps on {self.train_language}: mean NLL change of the other "
                f"{n_other} language{'' if n_other == 1 else 's'} {others}; "
                f"of {self.train_language} itself {own} (nats/token)")

    def payload(self) -> dict[str, Any]:
        return {"settings": self.settings, "languages": self.languages, "train_language": self.train_language,
                "before_nll": self.before_nll, "after_nll": self.after_nll, "losses": self.losses,
                "frozen_params": self.frozen_params, "tokens": self.tokens, "delta_nll": self.delta_nll(),
                "forgetting": self.forgetting_rows()}

    to_dict = payload

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        lrs = self.meta.get("lr_per_step") or []
        steps = max((len(row) for row in self.losses), default=0)
        # the forgetting table is delta_nll: a table called "forgetting" would overwrite the sidecar
        return {
            "delta_nll": self.forgetting_rows(),
            "nll": [{"setting": "before", **dict(zip(self.languages, self.before_nll))}]
            + [{"setting": s, **dict(zip(self.languages, row))} for s, row in zip(self.settings, self.after_nll)],
            "losses": [{"step": i, "lr": lrs[i] if i < len(lrs) else None,
                        **{s: row[i] for s, row in zip(self.settings, self.losses)}} for i in range(steps)],
        }

    def derived_meta(self) -> dict[str, Any]:
        return {"settings": list(self.settings), "train_language": self.train_language}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], r: Any) -> ForgettingResult:
        def floats(v: list[float | None]) -> list[float]:  # null: NaN (a diverged run)
            return [math.nan if x is None else float(x) for x in v]

        return cls(list(r["settings"]), list(r["languages"]), str(r["train_language"]), floats(r["before_nll"]),
                   [floats(row) for row in r["after_nll"]], [floats(row) for row in r["losses"]],
                   [int(k) for k in r["frozen_params"]], {k: int(v) for k, v in r["tokens"].items()}, meta)

    def validate(self) -> None:
        fix = "the artifact was edited or damaged; re-run the forgetting experiment"
        n_set, n_lang = len(self.settings), len(self.languages)
        if not n_set or len(set(self.settings)) != n_set:
            raise LapeError(f"forgetting result has settings {self.settings} (none, or repeated): {fix}")
        if len(self.before_nll) != n_lang or len(self.after_nll) != n_set or any(
                len(row) != n_lang for row in self.after_nll):
            raise LapeError(f"forgetting result NLLs are not {n_set} settings x {n_lang} languages: {fix}")
        if len(self.losses) != n_set or len({len(row) for row in self.losses}) > 1:
            raise LapeError(f"forgetting result losses are not one equally long row per setting: {fix}")
        if len(self.frozen_params) != n_set or any(k < 0 for k in self.frozen_params):
            raise LapeError(f"forgetting result frozen counts are not {n_set} non-negative numbers: {fix}")
        values = [*self.before_nll, *(v for row in self.after_nll + self.losses for v in row)]
        if any(v < 0 for v in values if not math.isnan(v)) or any(v < 0 for v in self.tokens.values()):
            raise LapeError(f"forgetting result holds a negative NLL, loss or token count: {fix}")


# --------------------------------------------------------------------------------------------
# Training


def _train(model: nn.Module, params: Mapping[str, nn.Parameter], train: list[tuple[torch.Tensor, torch.Tensor]],
           config: TrainConfig, frozen: Mapping[str, torch.Tensor], bar: Any) -> tuple[list[float], int]:
    """Train ``params`` in place on ``train`` with ``frozen`` entries held fixed; returns the loss
    per step and the number of trained targets. The caller restores the weights."""
    device = input_device(model)
    decay = [p for n, p in params.items() if not any(k in n for k in NO_DECAY)]
    no_decay = [p for n, p in params.items() if any(k in n for k in NO_DECAY)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas))
    losses, targets = [], 0
    with freeze(model, frozen) as held:  # gradient hooks on the frozen entries; removed on exit
        for step, (ids, mask) in enumerate(train):
            ids, mask = ids.to(device), mask.to(device)
            # the batch's loss at the weights its gradient is taken at
            grads, n, loss = batch_gradients(model, params, ids, mask, config.chunk_size)
            losses.append(loss)
            targets += n
            if n:
                for name, p in params.items():
                    p.grad = grads.get(name)  # None: unused, AdamW skips it
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None],
                                                   config.grad_clip)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
                optimizer.step()
                held.after_step()  # undo weight decay on the frozen entries (bit-exact)
                for p in params.values():
                    p.grad = None
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses, targets


def _check_inputs(model: nn.Module, train_corpus: Mapping[str, Iterable[Any]],
                  eval_corpus: Mapping[str, Iterable[Any]], regions: ParamRegions | None,
                  config: TrainConfig) -> None:
    """Refuse, before any model pass, what would fail later."""
    lang = config.train_language
    if not lang:
        raise LapeError("no training language: set train_language (--train-language) to a language of the train corpus")
    if lang not in train_corpus:
        raise LapeError(f"train_language {lang!r} is not in the train corpus (it has "
                        f"{', '.join(train_corpus) or 'no language'}): pick one of those or load that language")
    if not eval_corpus:
        raise LapeError("no language to evaluate: give eval_corpus at least one language (its valid split)")
    labels = [s for s in config.freeze if s != NONE]
    if labels and regions is None:
        raise LapeError(f"freeze={list(config.freeze)} names region {labels[0]!r} but no regions were given: "
                        "pass regions= (from select_regions) or freeze only 'none'")
    for label in labels:
        if label not in regions.labels:
            raise LapeError(f"freeze setting {label!r} is not a region (the regions are {', '.join(regions.labels)}) "
                            "nor 'none': use one of those")
    if regions is not None and labels:
        regions.check_model(model)
    if torch.is_inference_mode_enabled():
        raise LapeError("training needs gradients: call continued_pretraining outside torch.inference_mode()")
    check_positions(model, max([getattr(s, "seq_len", 0) for s in eval_corpus.values()], default=0))
    check_corpus(eval_corpus)


def _frozen_masks(regions: ParamRegions | None, label: str, space: ParamSpace) -> dict[str, torch.Tensor]:
    """The region's masks on the non-norm decoder-block tensors (the reference's ``layers.``
    minus ``norm``); tensors outside the blocks are not trained, so they need no freezing."""
    if label == NONE:
        return {}
    trained = set(space.names(norms=False))
    return {name: m for name, m in regions.mask(label).items() if name in trained}


def continued_pretraining(
    model: nn.Module,
    train_corpus: Mapping[str, Iterable[Any]],
    eval_corpus: Mapping[str, Iterable[Any]],
    regions: ParamRegions | None,
    config: TrainConfig,
    *,
    out: str | Path | None = None,
    progress: bool = True,
) -> ForgettingResult:
    """Further pre-train on one language under each freezing setting; NLL before and after.

    Args:
        model: a causal LM; its weights are left bit-identical (see the module docstring).
        train_corpus: ``{language: sequences}`` (train split); only ``config.train_language`` is used.
        eval_corpus: ``{language: sequences}`` of the held-out split; every language is evaluated.
        regions: the regions whose labels ``config.freeze`` names (``None`` when it names only ``"none"``).
        config: settings; ``config.freeze`` lists the settings, each trained from the original weights.
        out: a folder to save the result into; a result there made from the same model, text,
            regions and settings is returned without training.
        progress: show a progress bar over the training steps.

    Returns:
        :class:`ForgettingResult`.

    Raises:
        LapeError: no or an unknown training language, a freeze label not among the regions
            (or regions missing), an empty evaluation language, a call in inference mode; all
            before any training.

    Example:
        >>> res = continued_pretraining(model, train, valid, regions,
        ...                             TrainConfig(train_language="ar", steps=50, lr=1e-4), out="runs/forget")
        >>> res.summary_line()
    """
    from tqdm.auto import tqdm

    _check_inputs(model, train_corpus, eval_corpus, regions, config)
    languages = list(eval_corpus)
    stream = train_corpus[config.train_language]
    uses_regions = any(s != NONE for s in config.freeze)
    inputs = {"train_corpus": {config.train_language: corpus_key(stream)},
              "eval_corpus": {lang: corpus_key(eval_corpus[lang]) for lang in languages},
              "regions": regions.identity() if uses_regions else None}
    key = artifacts.stage_key(ForgettingResult.KIND, model_fingerprint=fingerprint(model),
                              config=config.key_dict(), inputs=inputs)

    def compute() -> ForgettingResult:
        train = training_batches(stream, config)
        check_positions(model, max(int(ids.shape[1]) for ids, _ in train))
        if not any(int((m[:, 1:] * m[:, :-1]).sum()) for _, m in train):
            raise LapeError(f"the training sequences of {config.train_language!r} are one token long: nothing to "
                            "predict; check its train split")
        space = ParamSpace.of(model)
        names = space.names()
        masks = {s: _frozen_masks(regions, s, space) for s in config.freeze}
        frozen_counts = [sum(int(m.sum()) for m in masks[s].values()) for s in config.freeze]
        evaluation = PerplexityConfig(batch_size=config.batch_size, chunk_size=config.chunk_size, seed=config.seed)
        tokens: dict[str, int] = {}

        def evaluate() -> list[float]:
            row = []
            for lang in languages:
                nll, tokens[lang] = corpus_nll(model, eval_corpus[lang], evaluation)
                row.append(nll)
            return row

        bar = tqdm(total=config.steps * len(config.freeze), desc="further pre-training", unit="step",
                   disable=not progress)
        after, losses, targets = [], [], 0
        try:
            with gradients_for(model, names) as params:  # requires_grad and eval mode, restored on exit
                before = evaluate()
                original = {n: p.detach().clone() for n, p in params.items()}
                grads = {n: p.grad for n, p in params.items()}
                try:
                    for setting in config.freeze:
                        bar.set_description(f"further pre-training ({setting} frozen)")
                        try:
                            setting_losses, targets = _train(model, params, train, config, masks[setting], bar)
                            losses.append(setting_losses)
                            after.append(evaluate())
                        finally:  # every setting starts from the original weights; so does the caller
                            with torch.no_grad():
                                for n, p in params.items():
                                    p.copy_(original[n])
                finally:
                    for n, p in params.items():
                        p.grad = grads[n]
        finally:
            bar.close()
        meta = artifacts.model_sidecar(
            ForgettingResult.KIND, model, languages=languages, token_counts=tokens, config=config.to_dict(),
            inputs=inputs, method=METHOD, train_tokens_per_setting=targets,
            lr_per_step=[learning_rate(config, s) for s in range(config.steps)],
            trained_params=space.num_parameters(),
            regions=None if not uses_regions else {"method": regions.meta.get("method"), "counts": regions.counts()})
        return ForgettingResult(list(config.freeze), languages, config.train_language, before, after, losses,
                                frozen_counts, tokens, meta)

    result = artifacts.run_stage(ForgettingResult, out, key, compute, model=model)
    logger.info("%s", result.summary_line())
    return result


# --------------------------------------------------------------------------------------------
# Figure


def forgetting_figure(result: ForgettingResult) -> Figure:
    """NLL change per language and setting (bars; the trained language shaded) beside the
    training loss per step (one line per setting).

    Example:
        >>> fig = forgetting_figure(ForgettingResult.load("runs/demo/forgetting"))
    """
    import numpy as np

    from ..plots import _figure, _label_colors

    settings, languages = result.settings, result.languages
    colors = _label_colors(len(settings))
    fig = _figure(max(6.4, 3.6 + 0.5 * len(languages) * max(1, len(settings)) / 2), 3.3)
    bars_ax, loss_ax = fig.subplots(1, 2, width_ratios=[max(2, len(languages)), 2])
    x = np.arange(len(languages))
    width = 0.8 / len(settings)
    if result.train_language in languages:
        j = languages.index(result.train_language)
        bars_ax.axvspan(j - 0.45, j + 0.45, color="#fff2cc", zorder=0, lw=0)
    for k, (setting, row) in enumerate(zip(settings, result.delta_nll())):
        bars_ax.bar(x + (k - (len(settings) - 1) / 2) * width, np.asarray(row, dtype=float), width,
                    color=colors[k], label=setting, zorder=2)
    bars_ax.axhline(0.0, color="#555555", lw=0.8)
    bars_ax.set_xticks(x, [f"{lang}\n(trained)" if lang == result.train_language else lang for lang in languages],
                       fontsize=8)
    for tick in bars_ax.get_xticklabels():
        if tick.get_text().endswith("(trained)"):
            tick.set_fontweight("bold")
    bars_ax.set_ylabel("NLL change (nats/token)")
    bars_ax.grid(axis="y", color="#dddddd", lw=0.6, zorder=1)
    bars_ax.spines[["top", "right"]].set_visible(False)
    bars_ax.set_title("NLL after minus before", fontsize=9)
    for k, (setting, row) in enumerate(zip(settings, result.losses)):
        loss_ax.plot(np.arange(len(row)), np.asarray(row, dtype=float), lw=1.4, color=colors[k], label=setting)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel(f"training loss on {result.train_language}")
    loss_ax.grid(color="#dddddd", lw=0.6)
    loss_ax.spines[["top", "right"]].set_visible(False)
    loss_ax.set_title("training loss", fontsize=9)
    fig.legend(handles=list(loss_ax.lines), title="frozen", frameon=False, fontsize=8, title_fontsize=8,
               loc="outside right upper")
    fig.suptitle(f"Further pre-training on {result.train_language}: forgetting per frozen region", fontsize=10)
    return fig


_SAVE_META = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}, "pdf": {"CreationDate": None}}


def plot_forgetting(result: ForgettingResult, path: str | Path) -> Path:
    """Write :func:`forgetting_figure` to ``path`` (``.png``, ``.svg`` or ``.pdf``; no suffix:
    ``.png``), atomically, without dates, so re-runs give equal files.

    Returns:
        The written path.

    Example:
        >>> plot_forgetting(res, "runs/demo/plots/forgetting.png")
    """
    import matplotlib

    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    fmt = path.suffix[1:].lower()
    if fmt not in _SAVE_META:
        raise LapeError(f"cannot write a {path.suffix} figure ({path}): use .png, .svg or .pdf")
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "lape", "svg.fonttype": "path"}):
        forgetting_figure(result).savefig(buf, format=fmt, dpi=120, metadata=_SAVE_META[fmt],
                                          bbox_inches="tight", pad_inches=0.08)
    atomic_write_bytes(path, buf.getvalue())
    return path
