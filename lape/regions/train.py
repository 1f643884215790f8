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
(:meth:`ForgettingResult.seed_changes`) so the spread between runs stays visible.

**Forgetting or damage.** A rise of the other languages' NLL is forgetting only where the
training taught the trained language something. ``trained_nll_fell(c)`` holds when the trained
language's interval lies below 0 **and** every seed's own change is negative;
:meth:`ForgettingResult.verdict` computes the sentence the report shows: where the trained
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
streams; :func:`continued_pretraining` runs the sequences it is given.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from .. import artifacts
from ..autograd import gradients_for
from ..config import StageConfig, option
from ..corpora import batches
from ..corpora.identity import MAX_SEQ_LEN, check_corpus, corpus_key
from ..errors import LapeError
from ..evaluate.perplexity import sequence_nll
from ..intervals import Interval, bootstrap
from ..masks import ParamRegions
from ..models import check_positions, fingerprint, input_device
from ..space import ParamSpace
from ..weights import freeze
from .importance import batch_gradients
from .select import extreme_mask, region_size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

NONE = "none"  # the setting that freezes nothing
MAGNITUDE = "magnitude"  # the setting that freezes the largest |theta| entries (as many as the core)
CONTROLS = ("core", "random", MAGNITUDE)  # what the verdict compares
MAGNITUDE_RATE = 0.01  # the magnitude control's share of each tensor when there is no core region (paper: 1%)
NO_DECAY = ("bias", "LayerNorm.weight")  # the reference's no-decay name parts
RESAMPLES = 2000  # bootstrap resamples of every interval (seed 0)
DAMAGE = "perturbation damage, not forgetting"
AGREES = "the direction agrees with the paper"
METHOD = "frozen further pre-training (Zhang et al. 2024, step 6)"


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Settings of :func:`continued_pretraining`; the optimizer follows the released
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
# The result


def _pooled_change(rows: np.ndarray) -> float:
    """``rows [windows, 1 + seeds]`` (tokens, then each seed's summed NLL change): the change per
    token averaged over the seeds, ``sum(changes) / seeds / sum(tokens)``."""
    tokens = rows[:, 0].sum()
    return float(rows[:, 1:].sum() / (rows.shape[1] - 1) / tokens) if tokens > 0 else math.nan


@dataclass
class ForgettingResult(artifacts.Artifact):
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
        >>> res = ForgettingResult.load("runs/demo/forgetting")
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

    KIND: ClassVar[str] = "forgetting"
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
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], r: Any) -> ForgettingResult:
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
        raise LapeError("training needs gradients: call continued_pretraining outside torch.inference_mode()")
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
        :class:`ForgettingResult`.

    Raises:
        LapeError: no or an unknown training language, a freeze label not among the regions
            (or regions missing), an empty evaluation language, a call in inference mode; all
            before any training.

    Example:
        >>> res = continued_pretraining(model, train, valid, regions,
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
    key = artifacts.stage_key(ForgettingResult.KIND, model_fingerprint=fingerprint(model),
                              config=config.key_dict(), inputs=inputs)

    def compute() -> ForgettingResult:
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
            ForgettingResult.KIND, model, languages=languages,
            token_counts={lang: int(n.sum()) for lang, n in window_tokens.items()}, config=config.to_dict(),
            inputs=inputs, method=METHOD, train_tokens_per_run=targets,
            lr_per_step=[learning_rate(config, s) for s in range(config.steps)],
            seconds_per_step=round(train_seconds / max(1, config.steps * n_set * n_seed), 3),
            trained_params=space.num_parameters(),
            magnitude_size=("the core region's count per tensor" if regions is not None and "core" in regions.labels
                            else f"max(1, floor({MAGNITUDE_RATE} numel)) per tensor") if MAGNITUDE in config.freeze
            else None,
            regions=None if not uses_regions else {"method": regions.meta.get("method"), "counts": regions.counts()})
        return ForgettingResult(list(config.freeze), languages, config.train_language, list(config.seeds),
                                window_tokens, before, after, losses, frozen_counts, meta)

    result = artifacts.run_stage(ForgettingResult, out, key, compute, model=model)
    logger.info("%s", result.summary_line())
    logger.info("%s", result.verdict())
    return result


# --------------------------------------------------------------------------------------------
# Figure


def forgetting_figure(result: ForgettingResult) -> Figure:
    """NLL change per language and setting (bars: the seed mean, whiskers: its 95% interval; the
    trained language shaded) beside the training loss per step (one line per setting, seed mean).

    Example:
        >>> fig = forgetting_figure(ForgettingResult.load("runs/demo/forgetting"))
    """
    from ..plots import label_colors, new_figure

    settings, languages = result.settings, result.languages
    colors = label_colors(len(settings))
    fig = new_figure(max(6.4, 3.6 + 0.5 * len(languages) * max(1, len(settings)) / 2), 3.3)
    bars_ax, loss_ax = fig.subplots(1, 2, width_ratios=[max(2, len(languages)), 2])
    x = np.arange(len(languages))
    width = 0.8 / len(settings)
    if result.train_language in languages:
        j = languages.index(result.train_language)
        bars_ax.axvspan(j - 0.45, j + 0.45, color="#fff2cc", zorder=0, lw=0)
    for k, (setting, row) in enumerate(zip(settings, result.delta_nll())):
        ivs = [result.change(setting, lang) for lang in languages]
        values = np.asarray(row, dtype=float)
        err = np.array([[max(0.0, v - iv.low), max(0.0, iv.high - v)] for v, iv in zip(values, ivs)]).T
        bars_ax.bar(x + (k - (len(settings) - 1) / 2) * width, values, width, yerr=np.nan_to_num(err),
                    color=colors[k], label=setting, zorder=2, error_kw={"lw": 0.8, "capsize": 1.5, "zorder": 3})
    bars_ax.axhline(0.0, color="#555555", lw=0.8)
    bars_ax.set_xticks(x, [f"{lang}\n(trained)" if lang == result.train_language else lang for lang in languages],
                       fontsize=8)
    for tick in bars_ax.get_xticklabels():
        if tick.get_text().endswith("(trained)"):
            tick.set_fontweight("bold")
    bars_ax.set_ylabel("NLL change (nats/token)")
    bars_ax.grid(axis="y", color="#dddddd", lw=0.6, zorder=1)
    bars_ax.spines[["top", "right"]].set_visible(False)
    n_seeds = len(result.seeds)
    bars_ax.set_title(f"NLL after minus before ({n_seeds} seed{'' if n_seeds == 1 else 's'}, 95% intervals)",
                      fontsize=9)
    for k, (setting, row) in enumerate(zip(settings, result.losses)):
        loss_ax.plot(np.arange(len(row)), np.asarray(row, dtype=float), lw=1.4, color=colors[k], label=setting)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel(f"training loss on {result.train_language}")
    loss_ax.grid(color="#dddddd", lw=0.6)
    loss_ax.spines[["top", "right"]].set_visible(False)
    loss_ax.set_title("training loss (seed mean)", fontsize=9)
    fig.legend(handles=list(loss_ax.lines), title="frozen", frameon=False, fontsize=8, title_fontsize=8,
               loc="outside right upper")
    fig.suptitle(f"Further pre-training on {result.train_language}: forgetting per frozen setting", fontsize=10)
    return fig


_SAVE_META = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}, "pdf": {"CreationDate": None}}
