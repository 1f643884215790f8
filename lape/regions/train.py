"""Frozen further pre-training: does freezing the core region slow forgetting? (Zhang et al.,
ACL 2024, step 6; `region_freeze_train.py`).

Each setting of ``config.freeze`` trains the model on one language (``train_language``) for
``config.steps`` optimizer steps from the same original weights, once per seed of
``config.seeds``, with one set of entries held fixed:

* ``"none"``: nothing frozen (plain further pre-training, the forgetting baseline);
* a region label (``"core"``, ``"random"``, ``"bottom"``, a language, ...): that region's
  entries of every non-norm decoder-block tensor;
* ``"magnitude"``: the control for "the core is just the largest weights": in every non-norm
  decoder-block tensor, the ``k`` entries of largest ``|theta|`` (original weights), ``k`` the
  core region's count in that tensor (without a ``core`` region, ``max(1, floor(0.01 numel))``,
  the paper's 1%); ties go to the lower flat index (:func:`lape.regions.select.extreme_mask`).
  A region labelled ``"magnitude"`` is shadowed by this setting.

Frozen entries are held the reference's way (:func:`lape.weights.freeze`): their gradients are
zeroed and, after **every** optimizer step, their values are written back
(:meth:`~lape.weights.FrozenWeights.after_step`, the reference's ``theta <- theta * ~mask +
theta_frozen``), so they stay bit-identical even under AdamW's weight decay. Norm weights are
never frozen (the reference skips names containing ``'norm'``; here
:attr:`lape.space.ParamInfo.is_norm`, which also covers GPT-2's ``ln_1``).

**What is measured.** Every held-out window ``w`` of every language of ``eval_corpus`` is
scored once before training and after each (setting, seed) run: ``N_w`` predicted tokens and the
summed NLL ``B_w`` before, ``A_{c,s,w}`` after setting ``c`` with seed ``s``. The change of a set
of windows ``W`` (one language, or all the languages that were not trained on, pooled) is

    Delta_c(W) = sum_{w in W} (1/S) sum_s (A_{c,s,w} - B_w) / sum_{w in W} N_w     (nats/token),

the mean over the ``S`` seeds of the token-weighted NLL change (every language gets the same
token budget, so the pooled change of the other languages is the mean of theirs). Its 95%
interval is a percentile bootstrap (:func:`lape.intervals.bootstrap`, 2,000 resamples, seed 0)
**over evaluation windows**, each window carrying its change under every seed: the same windows
are scored after every seed's run, so they are resampled together and the seed-to-seed spread
stays inside each resampled window. A bootstrap over the seeds alone has 10 distinct resamples for
3 seeds, too coarse for a 95% interval; each seed's own change is reported beside the interval
(:meth:`RegionTrain.seed_changes`) so the spread between runs stays visible.

**Forgetting or damage.** A rise of the other languages' NLL is forgetting only where the
training taught the trained language something. ``trained_nll_fell(c)`` holds when the trained
language's interval lies below 0 **and** every seed's own change is negative;
:meth:`RegionTrain.verdict` computes the sentence the report shows: where the trained
language's NLL did not fall under every setting, the result is labelled "perturbation damage,
not forgetting" (a short run at a high learning rate, the README's first version: 12 steps at
lr 2e-4 raised Arabic's own NLL by +0.83 nats); only where it fell and the core's interval of the
other languages' change lies apart from, and below, both the random region's and the
magnitude-matched control's does it say that the direction agrees with the paper.

**The regime.** Short runs at a high learning rate damage a small model: the README's first
version (12 steps of 2 x 256 tokens at lr 2e-4) raised Arabic's own held-out NLL by +0.83 nats,
so freezing "protected" whatever it covered. The defaults (12 steps of 2 x 128 tokens, lr 1e-5,
2 warm-up steps) come from runs on the built-in model (Gemma 3 270M) training on Arabic, with
Arabic's held-out NLL (1,020 tokens, seed 0) watched every few steps:

* lr 1e-5, batch 2 x 128 (the first 16 steps of a 48-step schedule, 4 warm-up): 3.565 -> 3.448
  after 8 steps -> 3.418 after 16 (-0.147 nats/token), falling throughout;
* lr 3e-5, batch 1 x 128 (the first 24 steps of a 96-step schedule, 8 warm-up): 3.565 -> 3.591
  after 12 steps -> 3.636 after 24 (+0.07; English fell by 0.12 meanwhile): still damage.

A step of 2 x 128 tokens took 34 CPU-seconds (about 17-20 s on 2 free cores; evaluation costs
about 21 CPU-ms per token), so 3 seeds x 4 settings x 12 steps with 5 languages x 1,024
evaluated tokens fit about an hour on 2 CPU cores (``scripts/run_regions.sh``). Whether the
trained language's NLL fell is measured on every run and decides the verdict, so a regime that
does not teach it is labelled, never read as forgetting.

**What is trained.** An ordinary :class:`torch.optim.AdamW` over the decoder-block parameters
(:meth:`lape.space.ParamSpace.names`, norms included, as the reference trains everything);
embeddings, the final norm and the LM head stay fixed. That keeps a CPU run affordable
(the embeddings are most of a small multilingual model's parameters) and avoids mixing input
and output with tied embeddings, where a trained output matrix would also be a changed input
embedding. Biases (and ``LayerNorm.weight``, a name no model here has) get no weight decay, as
in the reference's ``get_optimizer_grouped_parameters``; so LLaMA-style norm weights are decayed,
as they were there. Every (setting, seed) run starts from the original weights with fresh
optimizer moments.

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
scheduler no step runs at learning rate 0, which a short run cannot spare.

**Data.** The first ``steps * batch_size`` sequences of ``train_corpus[train_language]`` (fewer
if the stream is shorter), visited in an order drawn from each seed: every pass over them is a
new permutation, so a short stream is cycled. Every setting sees the same batches under one seed,
so the settings differ only in what is frozen.

**The model is not changed**: the decoder-block parameters are copied before training and
written back after each run, in a ``finally`` (also after an exception or ``Ctrl-C``), with
their ``requires_grad`` flags, ``.grad`` and train/eval mode. The copy costs one model's decoder
blocks of memory, AdamW's moments two more.

Corpus fields (``seq_len``, ``eval_tokens_per_language``, ``seed``) say how the CLI builds the
streams; :func:`region_train` runs the sequences it is given.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import artifacts
from ..autograd import gradients_for
from ..config import StageConfig, option
from ..corpora import batches
from ..corpora.identity import MAX_SEQ_LEN, check_corpus, corpus_key
from ..errors import LapeError
from ..evaluate.perplexity import sequence_nll
from ..fingerprint import fingerprint
from ..masks import ParamRegions
from ..models import check_positions, input_device
from ..space import ParamSpace
from ..weights import freeze
from .forgetting import MAGNITUDE, MAGNITUDE_RATE, METHOD, NONE, RegionTrain
from .importance import batch_gradients
from .select import extreme_mask, region_size

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight")  # the reference's no-decay name parts


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Settings of :func:`region_train`; the optimizer follows the released
    freeze-training script (betas, weight decay, clipping, cosine schedule), the step size and
    length a regime in which the trained language's held-out NLL falls on a CPU (module docstring)."""

    train_language: str = ""  # the language trained on (the paper: Arabic; the code: Chinese); required
    freeze: tuple[str, ...] = (NONE, "core", "random", MAGNITUDE)  # settings run side by side: "none",
    # "magnitude" or a region label
    steps: int = option(12, min=1, max=10_000_000)  # optimizer steps per run (paper: 200k samples / 256)
    batch_size: int = option(2, min=1, max=4096)  # sequences per step (paper: 256, 2 x 8 GPUs x GAS 16)
    seq_len: int = option(128, min=2, max=MAX_SEQ_LEN)  # packed sequence length of the streams (paper: 512)
    lr: float = option(1e-5, gt=0.0, max=1.0)  # peak learning rate (paper: 5e-5; on Gemma 3 270M 3e-5 with
    # batch 1 x 128 still raised the trained language's NLL, 1e-5 with 2 x 128 lowered it)
    betas: tuple[float, float] = option((0.9, 0.95), min=0.0, max=0.999999)  # AdamW betas (paper)
    weight_decay: float = option(0.001, min=0.0, max=1.0)  # AdamW decoupled weight decay (paper)
    warmup_steps: int = option(2, min=0)  # linear warm-up steps before the cosine decay (paper: 100)
    grad_clip: float = option(1.0, min=0.0)  # global gradient-norm clip (paper: 1.0); 0 turns it off
    eval_tokens_per_language: int = option(1024, gt=0)  # valid tokens per evaluated language
    seeds: tuple[int, ...] = option((0, 1, 2), min=0)  # one run per seed and setting: the order of the
    # training sequences; 3 give the intervals a spread between runs (paper: one run, seed 1234)
    seed: int = option(0, min=0)  # the corpus shuffle: which text the streams hold
    chunk_size: int = option(512, min=1, key=False)  # positions whose vocabulary logits exist at once

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.betas) != 2:
            raise LapeError(f"train setting betas (--betas) is {list(self.betas)}: give two numbers, e.g. 0.9 0.95")
        if not self.freeze:
            raise LapeError('train setting freeze (--freeze) is empty: give at least one, e.g. "none core random '
                            'magnitude"')
        if len(set(self.freeze)) != len(self.freeze):
            raise LapeError(f"train setting freeze (--freeze) repeats a setting: {list(self.freeze)}; "
                            "give each once")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise LapeError(f"train setting seeds (--seeds) is {list(self.seeds)}: give one or more different "
                            "seeds, e.g. 0 1 2")


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


def training_batches(stream: Iterable[Any], config: TrainConfig, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``config.steps`` training batches ``(input_ids [B, T], attention_mask [B, T])`` of one seed.

    The first ``steps * batch_size`` sequences of ``stream`` are kept; each pass over them
    visits them in a new order drawn from ``seed``, so a short stream is cycled.

    Raises:
        LapeError: the stream yields no sequence.
    """
    need = config.steps * config.batch_size
    pool = list(islice(stream, need))
    if not pool:
        raise LapeError(f"the training language {config.train_language!r} has no text: check its train split")
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < need:  # one permutation per pass
        order += torch.randperm(len(pool), generator=g).tolist()
    chosen = [pool[i] for i in order[:need]]
    return list(batches(chosen, config.batch_size))


def magnitude_masks(model: nn.Module, regions: ParamRegions | None = None) -> dict[str, torch.Tensor]:
    """The magnitude-matched control: per non-norm decoder-block tensor, the ``k`` entries of
    largest ``|theta|``, ``k`` the ``core`` region's count in that tensor (without a core region,
    ``max(1, floor(0.01 numel))``); ties go to the lower flat index.

    Example:
        >>> masks = magnitude_masks(model, regions)   # {name: bool mask of the tensor's shape}
    """
    space = ParamSpace.of(model)
    named = dict(model.named_parameters())
    core = regions.mask("core") if regions is not None and "core" in regions.labels else None
    masks = {}
    for name in space.names(norms=False):
        theta = named[name].detach()
        k = int(core[name].sum()) if core is not None else region_size(MAGNITUDE_RATE, theta.numel())
        flat = torch.zeros(theta.numel(), dtype=torch.bool)
        if k:
            flat = extreme_mask(theta.reshape(-1).abs().float().cpu(), k)
        masks[name] = flat.reshape(theta.shape).to(theta.device)
    return masks


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


def window_nll(model: nn.Module, sequences: Iterable[Any], chunk_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (nats, float64) and predicted tokens (int64) of every sequence, ``[windows]`` each
    (one forward pass per window, so no padding enters)."""
    device = input_device(model)
    sums, counts = [], []
    with torch.inference_mode():
        for ids, mask in batches(sequences, 1):
            s, n = sequence_nll(model, ids.to(device), mask.to(device), chunk_size)
            sums.append(s)
            counts.append(n)
    return torch.tensor(sums, dtype=torch.float64), torch.tensor(counts, dtype=torch.long)


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
    labels = [s for s in config.freeze if s not in (NONE, MAGNITUDE)]
    if labels and regions is None:
        raise LapeError(f"freeze={list(config.freeze)} names region {labels[0]!r} but no regions were given: "
                        "pass regions= (from select_regions) or freeze only 'none' and 'magnitude'")
    for label in labels:
        if label not in regions.labels:
            raise LapeError(f"freeze setting {label!r} is not a region (the regions are {', '.join(regions.labels)}) "
                            "nor 'none' or 'magnitude': use one of those")
    if regions is not None and any(s != NONE for s in config.freeze):
        regions.check_model(model)
    if torch.is_inference_mode_enabled():
        raise LapeError("training needs gradients: call region_train outside torch.inference_mode()")
    check_positions(model, max([getattr(s, "seq_len", 0) for s in eval_corpus.values()], default=0))
    check_corpus(eval_corpus)


def _frozen_masks(model: nn.Module, regions: ParamRegions | None, label: str, space: ParamSpace
                  ) -> dict[str, torch.Tensor]:
    """The setting's masks on the non-norm decoder-block tensors (the reference's ``layers.``
    minus ``norm``); tensors outside the blocks are not trained, so they need no freezing."""
    if label == NONE:
        return {}
    if label == MAGNITUDE:
        return magnitude_masks(model, regions)
    trained = set(space.names(norms=False))
    return {name: m for name, m in regions.mask(label).items() if name in trained}


def region_train(
    model: nn.Module,
    train_corpus: Mapping[str, Iterable[Any]],
    eval_corpus: Mapping[str, Iterable[Any]],
    regions: ParamRegions | None,
    config: TrainConfig,
    *,
    out: str | Path | None = None,
    progress: bool = True,
) -> RegionTrain:
    """Further pre-train on one language under each freezing setting and seed; NLL per held-out
    window before and after each run.

    Args:
        model: a causal LM; its weights are left bit-identical (see the module docstring).
        train_corpus: ``{language: sequences}`` (train split); only ``config.train_language`` is used.
        eval_corpus: ``{language: sequences}`` of the held-out split; every language is evaluated.
        regions: the regions whose labels ``config.freeze`` names (``None`` when it names only
            ``"none"`` and ``"magnitude"``; given, ``"magnitude"`` matches the core's count per tensor).
        config: settings; ``config.freeze`` lists the settings and ``config.seeds`` the seeds,
            each run trained from the original weights.
        out: a folder to save the result into; a result there made from the same model, text,
            regions and settings is returned without training.
        progress: show a progress bar over the training steps.

    Returns:
        :class:`RegionTrain`.

    Raises:
        LapeError: no or an unknown training language, a freeze label not among the regions
            (or regions missing), an empty evaluation language, a call in inference mode; all
            before any training.

    Example:
        >>> res = region_train(model, train, valid, regions,
        ...                             TrainConfig(train_language="ar", seeds=(0, 1, 2)), out="runs/forget")
        >>> res.verdict()
    """
    from tqdm.auto import tqdm

    _check_inputs(model, train_corpus, eval_corpus, regions, config)
    languages = list(eval_corpus)
    stream = train_corpus[config.train_language]
    uses_regions = regions is not None and any(s != NONE for s in config.freeze)
    inputs = {"train_corpus": {config.train_language: corpus_key(stream)},
              "eval_corpus": {lang: corpus_key(eval_corpus[lang]) for lang in languages},
              "regions": regions.identity() if uses_regions else None}
    key = artifacts.stage_key(RegionTrain.KIND, model_fingerprint=fingerprint(model),
                              config=config.key_dict(), inputs=inputs)

    def compute() -> RegionTrain:
        pool = list(islice(stream, config.steps * config.batch_size))  # read once, ordered per seed
        runs = {seed: training_batches(pool, config, seed) for seed in config.seeds}
        first = runs[config.seeds[0]]
        check_positions(model, max(int(ids.shape[1]) for ids, _ in first))
        if not any(int((m[:, 1:] * m[:, :-1]).sum()) for _, m in first):
            raise LapeError(f"the training sequences of {config.train_language!r} are one token long: nothing to "
                            "predict; check its train split")
        space = ParamSpace.of(model)
        names = space.names()
        masks = {s: _frozen_masks(model, regions, s, space) for s in config.freeze}
        frozen_counts = [sum(int(m.sum()) for m in masks[s].values()) for s in config.freeze]
        n_set, n_seed = len(config.freeze), len(config.seeds)

        def evaluate() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
            return {lang: window_nll(model, eval_corpus[lang], config.chunk_size) for lang in languages}

        bar = tqdm(total=config.steps * n_set * n_seed, desc="further pre-training", unit="step",
                   disable=not progress)
        losses = torch.full((n_set, n_seed, config.steps), math.nan, dtype=torch.float64)
        targets, train_seconds = 0, 0.0
        try:
            with gradients_for(model, names) as params:  # requires_grad and eval mode, restored on exit
                scored = evaluate()
                window_tokens = {lang: n for lang, (_, n) in scored.items()}
                before = {lang: s for lang, (s, _) in scored.items()}
                after = {lang: torch.zeros(n_set, n_seed, len(window_tokens[lang]), dtype=torch.float64)
                         for lang in languages}
                original = {n: p.detach().clone() for n, p in params.items()}
                grads = {n: p.grad for n, p in params.items()}
                try:
                    for i, setting in enumerate(config.freeze):
                        for j, seed in enumerate(config.seeds):
                            bar.set_description(f"further pre-training ({setting} frozen, seed {seed})")
                            try:
                                t0 = time.perf_counter()
                                run_losses, targets = _train(model, params, runs[seed], config, masks[setting], bar)
                                train_seconds += time.perf_counter() - t0
                                losses[i, j, :len(run_losses)] = torch.tensor(run_losses, dtype=torch.float64)
                                for lang, (s, _) in evaluate().items():
                                    after[lang][i, j] = s
                            finally:  # every run starts from the original weights; so does the caller
                                with torch.no_grad():
                                    for n, p in params.items():
                                        p.copy_(original[n])
                finally:
                    for n, p in params.items():
                        p.grad = grads[n]
        finally:
            bar.close()
        meta = artifacts.model_sidecar(
            RegionTrain.KIND, model, languages=languages,
            token_counts={lang: int(n.sum()) for lang, n in window_tokens.items()}, config=config.to_dict(),
            inputs=inputs, method=METHOD, train_tokens_per_run=targets,
            lr_per_step=[learning_rate(config, s) for s in range(config.steps)],
            seconds_per_step=round(train_seconds / max(1, config.steps * n_set * n_seed), 3),
            trained_params=space.num_parameters(),
            magnitude_size=("the core region's count per tensor" if regions is not None and "core" in regions.labels
                            else f"max(1, floor({MAGNITUDE_RATE} numel)) per tensor") if MAGNITUDE in config.freeze
            else None,
            regions=None if not uses_regions else {"method": regions.meta.get("method"), "counts": regions.counts()})
        return RegionTrain(list(config.freeze), languages, config.train_language, list(config.seeds),
                                window_tokens, before, after, losses, frozen_counts, meta)

    result = artifacts.run_stage(RegionTrain, out, key, compute, model=model)
    logger.info("%s", result.summary_line())
    logger.info("%s", result.verdict())
    return result
