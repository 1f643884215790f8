"""Per-language parameter importance by gradient accumulation (Zhang et al., ACL 2024, step 1;
`accumulate_grad_mul_params_on_multi_languages.py`).

For every language ``l`` and every parameter tensor ``theta`` of the decoder blocks
(:class:`lape.space.ParamSpace`; embeddings, the final norm and the LM head are left out):

    S_l(theta) = (theta - r) * G_l,    G_l = sum over l's batches b of  d loss_b / d theta

where ``r`` is the value the removal writes (:func:`lape.weights.removal_value`, the edit
:mod:`lape.regions.ablate` applies): 0 for every tensor except the weights of norms computing
``x * (1 + w)`` (Gemma 1-3 RMSNorm), where ``r = -1`` so that the scale ``1 + w`` becomes 0.
``-S_l`` is the first-order Taylor estimate of the loss change of that removal,
``L(r) - L(theta) ~ G_l * (r - theta)``; for every tensor but those norms this is the paper's
``theta * G_l``, and for them it is ``(1 + w) * G_l`` (the paper's ``w * G_l`` would score moving
the scale to 1, an edit nothing applies). The gradient is accumulated over the whole corpus
before the product: ``(theta - r) * sum_b g_b``, not ``sum_b |(theta - r) * g_b|``. **The sign
is kept**; selection (:mod:`lape.regions.select`) takes absolute values.

**The loss** ``loss_b`` is the causal-LM loss of the reference code: the mean next-token cross
entropy over the real targets of batch ``b`` (position ``t`` predicts token ``t+1``; a target
counts when both positions are real, i.e. padding is ``-100``), computed in float32 from the
model's logits. The reference calls ``model.backward(loss)`` once per micro-batch and never
steps, so ``G_l`` is the sum of per-batch mean gradients; DeepSpeed's ``1 / GAS`` and the
data-parallel average are constant factors that change no ranking and are left out. Two
consequences: a language's scores grow with its number of batches (give every language the same
token budget, as the paper does with 10,000 sequences each; the sidecar records ``batches`` per
language), and a partly filled last batch weighs its tokens more than a full one. Under
``torchrun`` every rank sums the mean gradients of its own batches and the sums are added, which
equals one process exactly when every batch is full. Unlike the reference collator, EOS tokens
inside a sequence are attended to (the reference masks them, a side effect of using EOS as pad).

**Precision.** Gradients are summed in float32 whatever the model's dtype (bf16 gradients are
biased, methods.md 6(b)); each batch's own backward pass runs in the model's dtype, as under
DeepSpeed bf16. ``(theta - r) * G`` is formed once per language at the end, in float32.

**Norm weights** are scored like any other tensor (the paper's ``'layers.'`` filter includes
them; ``norms=False`` leaves them out). Which convention each norm uses is read off the module's
behaviour by the same test the removal uses (:func:`lape.weights.removal_value`), never off a
model name; the sidecar records it per tensor (``params[name]["norm_scale"]``: ``"1 + w"`` or
``"w"``) with the removal value ``r``.

**The model is not changed**: no optimizer, no ``.grad`` left behind (gradients are taken with
:func:`torch.autograd.grad`), and ``requires_grad`` is switched on for the decoder-block
parameters only for the duration of the call and restored afterwards. Vocabulary logits exist
one chunk of positions at a time: the loss of each chunk is differentiated with respect to the
final hidden states, and one backward pass from those states gives the parameter gradients.

Resume, torchrun sharding and skip-when-cached come from :func:`lape.runningstats.tally` (the
running statistic is each parameter's float32 gradient sum), as in :func:`lape.record`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import artifacts
from ..autograd import gradients_for
from ..config import StageConfig, option
from ..corpora.identity import MAX_SEQ_LEN, corpus_config
from ..errors import LapeError
from ..fingerprint import fingerprint
from ..head import logits_from_hidden, next_token_targets
from ..models import input_device, model_id_of
from ..runningstats import RunningSums, dist_info, shard, stage_cache, tally
from ..space import ParamSpace
from ..weights import removal_value

logger = logging.getLogger(__name__)
# 2: S = (theta - r) * G with r the removal value ((1 + w) * G for x*(1+w) norms); 1: theta * G
ESTIMATE_VERSION = 2
LOSS = ("mean next-token cross entropy over the real targets of each batch, float32; "
        "gradients summed over batches")


@dataclass(frozen=True)
class ImportanceConfig(StageConfig):
    """Settings of :func:`importance`; every field is a CLI option and goes into the sidecar.

    The corpus fields (``tokens_per_language``, ``seq_len``, ``seed``, ``split``) build the corpus
    in the CLI; :func:`importance` replaces them in its sidecar by what the streams hold.
    ``languages`` picks languages of the corpus (``None``: all of them, in corpus order).
    """

    tokens_per_language: int | None = option(12_000, gt=0)  # token budget per language; the paper
    # uses 10,000 (or 100,000) sequences of 512 tokens on 8 GPUs; 12k keeps a CPU run short
    seq_len: int = option(512, min=2, max=MAX_SEQ_LEN)  # packed sequence length (paper: 512)
    batch_size: int = option(8, min=1, max=4096)  # sequences per backward pass (paper: 8 per GPU);
    # each batch's loss is a mean, so it changes the weighting of a partial last batch only
    seed: int = option(0, min=0)  # document shuffling seed
    split: str = "train"  # corpus split to accumulate on
    languages: tuple[str, ...] | None = None  # None: every language of the corpus
    norms: bool = True  # include the blocks' norm weights (the paper's 'layers.' filter does)
    chunk_size: int = option(512, min=1, key=False)  # positions whose vocabulary logits exist at once
    checkpoint_every: int = option(25, min=1, key=False)  # batches between resume checkpoints


@dataclass
class ParamImportance(artifacts.Artifact):
    """Signed per-language importance ``S_l = (theta - r) * G_l`` of every decoder-block parameter
    (``r``: the removal value, 0 except -1 for ``x * (1 + w)`` norm weights).

    Attributes:
        languages: language codes in tensor-axis order.
        scores: ``{parameter name: float32 [languages, *weight.shape]}`` (names as in
            ``model.named_parameters()``).
        meta: the sidecar: model id and fingerprint, ``token_counts`` (predicted tokens per
            language), ``batches`` per language, ``params`` (layer, block-relative type, shape,
            ``is_norm``, ``removal_value`` and ``norm_scale`` of every tensor), the config and the
            corpus keys.

    Example:
        >>> imp = ParamImportance.load("runs/demo/importance", model=model)
        >>> imp.score("fr")["model.layers.0.mlp.down_proj.weight"].shape
        torch.Size([640, 2048])
    """

    languages: list[str]
    scores: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "importance"
    DESCRIPTION: ClassVar[str] = "parameter importance"
    REQUIRED: ClassVar[tuple[str, ...]] = ("languages", "tensor_names")

    def __post_init__(self) -> None:
        self.languages = list(self.languages)
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise LapeError(f"ParamImportance needs distinct languages, got {self.languages}: give each "
                            "language once")

    def index(self, lang: str) -> int:
        """Axis-0 position of a language."""
        if lang not in self.languages:
            raise LapeError(f"language {lang!r} is not in this importance (it has {', '.join(self.languages)}): "
                            "compute it on that language first")
        return self.languages.index(lang)

    def score(self, lang: str) -> dict[str, torch.Tensor]:
        """``{name: float32 weight-shaped S_lang}`` (views, not copies)."""
        k = self.index(lang)
        return {name: s[k] for name, s in self.scores.items()}

    def subset(self, languages: Iterable[str]) -> ParamImportance:
        """The scores of some languages only, in the given order."""
        languages = list(languages)
        idx = [self.index(lang) for lang in languages]
        return ParamImportance(languages, {n: s[idx] for n, s in self.scores.items()}, dict(self.meta))

    def param_info(self, name: str) -> dict[str, Any]:
        """``{"layer", "type", "is_norm"}`` of a tensor: from the sidecar, or read off its name
        (``...layers.3.mlp.down_proj.weight`` -> layer 3, type ``mlp.down_proj.weight``) for
        hand-built scores."""
        info = (self.meta.get("params") or {}).get(name)
        if info is not None:
            return info
        parts = name.split(".")
        at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        layer, rel = (None, name) if at is None else (int(parts[at]), ".".join(parts[at + 1:]))
        owner = rel.rsplit(".", 1)[0].lower()
        return {"layer": layer, "type": rel, "is_norm": "norm" in owner and self.scores[name].dim() == 2}

    # artifact ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.scores)

    def derived_meta(self) -> dict[str, Any]:
        return {"languages": list(self.languages), "tensor_names": list(self.scores)}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> ParamImportance:
        return cls(list(meta["languages"]), {n: tensors[n] for n in meta["tensor_names"]}, meta)

    def validate(self) -> None:
        k = len(self.languages)
        shapes = {n: p.get("shape") for n, p in (self.meta.get("params") or {}).items()}
        if not self.scores:
            raise LapeError("the importance holds no parameter tensors: re-run it with a model that has decoder blocks")
        for name, s in self.scores.items():
            if s.dtype != torch.float32 or s.dim() < 2 or s.shape[0] != k:
                raise LapeError(f"importance of {name} must be float32 [languages={k}, *weight shape]; got {s.dtype} "
                                f"{tuple(s.shape)}: the artifact was edited or damaged; re-run the importance step")
            if shapes.get(name) is not None and list(s.shape[1:]) != list(shapes[name]):
                raise LapeError(f"importance of {name} is {tuple(s.shape[1:])} per language but its sidecar says "
                                f"{tuple(shapes[name])}: the artifact was edited or damaged; re-run the importance step")
            if not bool(torch.isfinite(s).all()):
                raise LapeError(f"importance of {name} holds NaN or infinite values (a diverging loss?): check the "
                                "model's dtype and corpus, then re-run the importance step")


class GradientSums(RunningSums):
    """Float32 gradient sums of one language (one buffer per parameter, on that parameter's
    device), with the number of predicted tokens and of batches."""

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        sums = {name: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for name, p in params.items()}
        device = next(iter(params.values())).device
        sums["token_counts"] = torch.zeros(1, dtype=torch.int64, device=device)
        sums["batches"] = torch.zeros(1, dtype=torch.int64, device=device)
        super().__init__(sums)

    def add(self, grads: Mapping[str, torch.Tensor | None], tokens: int) -> None:
        """Add one batch's gradients (``None``: the parameter did not take part)."""
        for name, g in grads.items():
            if g is not None:
                self.sums[name] += g.to(self.sums[name].device, torch.float32)
        self.sums["token_counts"] += tokens
        self.sums["batches"] += 1


def batch_gradients(model: nn.Module, params: Mapping[str, nn.Parameter], input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, chunk_size: int = 512
                    ) -> tuple[dict[str, torch.Tensor | None], int, float]:
    """Gradients of one batch's causal-LM loss (mean next-token cross entropy over real targets).

    Args:
        params: the parameters to differentiate (they must require grad).
        input_ids, attention_mask: ``[B, T]`` on the model's input device.
        chunk_size: positions whose vocabulary logits exist at once.

    Returns:
        ``({name: gradient in the parameter's dtype, or None if unused}, predicted tokens, loss)``
        with the loss (mean NLL, nats/token) at the weights the gradient is taken at;
        ``({}, 0, nan)`` when the batch has no target.
    """
    n = int((attention_mask[:, 1:] * attention_mask[:, :-1]).sum())
    if n == 0:
        return {}, 0, float("nan")
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state  # (B, T, H)
    h, targets, _ = next_token_targets(hidden, input_ids, attention_mask)  # (n, H), (n,)
    parts = []  # d loss / d h, one chunk of positions at a time: chunk x vocabulary logits at most
    total = 0.0
    for s in range(0, n, chunk_size):
        leaf = h[s:s + chunk_size].detach().requires_grad_(True)  # (chunk, H)
        logits = logits_from_hidden(model, leaf).float()  # (chunk, V)
        loss = F.cross_entropy(logits, targets[s:s + chunk_size], reduction="sum") / n
        parts.append(torch.autograd.grad(loss, leaf)[0])
        total += float(loss.detach())
    dh = torch.cat(parts)  # (n, H)
    names = list(params)
    grads = torch.autograd.grad(h, [params[k] for k in names], grad_outputs=dh, allow_unused=True)
    return dict(zip(names, grads)), n, total


def _norm_scale(is_norm: bool, removal: float) -> str | None:
    """How a norm weight scales its input: ``"1 + w"`` (removed at -1) or ``"w"``; None off norms."""
    if not is_norm:
        return None
    return "1 + w" if removal == -1.0 else "w"


def _param_names(model: nn.Module, params: ParamSpace | Sequence[str] | None, norms: bool) -> tuple[ParamSpace, list[str]]:
    space = params if isinstance(params, ParamSpace) else ParamSpace.of(model)
    if params is None or isinstance(params, ParamSpace):
        return space, space.names(norms=norms)
    names = list(params)
    for name in names:
        space.info(name)  # refuses a name outside the decoder blocks
    if not names:
        raise LapeError("params= names no parameter: give decoder-block names (see ParamSpace.of(model).names())")
    return space, [n for n in names if norms or not space.info(n).is_norm]


def param_importance(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    config: ImportanceConfig = ImportanceConfig(),
    *,
    out: str | Path | None = None,
    params: ParamSpace | Sequence[str] | None = None,
    progress: bool = True,
) -> ParamImportance:
    """Per-language importance ``(theta - r) * sum_b grad loss_b`` of every decoder-block
    parameter, ``r`` the value its removal writes (0, or -1 for ``x * (1 + w)`` norm weights).

    Args:
        model: a causal LM (from :func:`lape.load_model`); its weights are not changed.
        corpus: ``{language: iterable of sequences}`` with ``input_ids`` and ``attention_mask``
            (LongTensor ``[T]``), as given by :func:`lape.load_corpus`; deterministic iterables.
        config: settings; ``config.languages`` picks languages of the corpus.
        out: a folder to write ``importance`` into and check-point in; a complete artifact made
            from the same inputs is returned without recomputation.
        params: the tensors to score: the model's :class:`ParamSpace` (found automatically) or
            some of its parameter names. ``config.norms=False`` drops norm weights from either.
        progress: show a progress bar.

    Returns:
        :class:`ParamImportance` with float32 ``[languages, *shape]`` per tensor.

    Raises:
        LapeError: no languages, a language not in the corpus, a language without text or
            without a predicted token, or a call inside ``torch.inference_mode``.

    Example:
        >>> corpus = lape.load_corpus("builtin", tok, languages=["en", "fr"], tokens_per_language=8192)
        >>> imp = param_importance(model, corpus, ImportanceConfig(), out="runs/demo/importance")
    """
    if not corpus:
        raise LapeError("no languages to score: give the corpus at least one language")
    languages = list(config.languages) if config.languages is not None else list(corpus)
    if not languages:
        raise LapeError("languages=() names no language: leave it None for every language of the corpus")
    unknown = [lang for lang in languages if lang not in corpus]
    if unknown:
        raise LapeError(f"language {unknown[0]!r} is not in the corpus (it has {', '.join(corpus)}): "
                        "pick languages from the corpus or load that language")
    corpus = {lang: corpus[lang] for lang in languages}
    if torch.is_inference_mode_enabled():
        raise LapeError("importance needs gradients: call it outside torch.inference_mode()")
    config, inputs = corpus_config(model, corpus, config)
    space, names = _param_names(model, params, config.norms)
    inputs["params"] = artifacts.content_hash(names)
    # r per tensor: the removal's own test (x * (1 + w) norms are found by behaviour, not name)
    removal = {n: removal_value(model, n) for n in names}
    inputs["estimate_version"] = ESTIMATE_VERSION
    key, done = stage_cache(ParamImportance, model, config, inputs, out)
    if done is not None:
        return done
    fp = fingerprint(model)
    rank, world = dist_info()
    device = input_device(model)

    from ..corpora import batches

    with gradients_for(model, names) as wanted:
        def step(stat: GradientSums, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
            ids, mask = batch
            grads, n, _ = batch_gradients(model, wanted, ids.to(device), mask.to(device), config.chunk_size)
            if n:
                stat.add(grads, n)
            return int(mask.sum())

        results, report = tally(
            languages, lambda lang: GradientSums(wanted),
            lambda lang: batches(shard(corpus[lang], rank, world), config.batch_size), step,
            key=key, checkpoint_dir=Path(out) / "partial" if out is not None else None,
            checkpoint_every=config.checkpoint_every, progress=progress, desc="importance",
            total=lambda lang: getattr(corpus[lang], "budget", None))
        theta = {n: wanted[n].detach() for n in names}
        counts = {lang: int(results[lang].pop("token_counts")) for lang in languages}
        n_batches = {lang: int(results[lang].pop("batches")) for lang in languages}
        for lang in languages:
            if counts[lang] == 0:
                raise LapeError(f"language {lang!r} gave no token to predict: its sequences are one token long; "
                                f"check its {config.split} split (or raise --tokens-per-language)")
        scores = {}
        for n in names:  # S = (theta - r) * G in float32, one tensor at a time; G is freed as it goes
            w = theta[n].to("cpu", torch.float32) - removal[n]  # (1 + w) for x * (1 + w) norms
            scores[n] = torch.stack([w * results[lang].pop(n) for lang in languages])
    imp = ParamImportance(languages, scores)
    infos = {p.name: p for p in space.params}
    imp.meta = artifacts.sidecar(
        ParamImportance.KIND, model_id=model_id_of(model), model_fingerprint=fp,
        num_layers=space.num_layers, neurons_per_layer=space.neurons_per_layer,
        languages=languages, token_counts=counts, config=config.to_dict(), inputs=inputs, cache_key=key,
        method="linguistic regions importance (Zhang et al. 2024): S = (theta - r) * sum_b grad loss_b, signed; "
               "r = the removal value (0, or -1 for x*(1+w) norm weights, so S = (1 + w) * G there)",
        loss=LOSS, batches=n_batches, model_dtype=str(next(iter(theta.values())).dtype).replace("torch.", ""),
        params={n: {"layer": infos[n].layer, "type": infos[n].type, "shape": list(infos[n].shape),
                    "is_norm": infos[n].is_norm, "removal_value": removal[n],
                    "norm_scale": _norm_scale(infos[n].is_norm, removal[n])} for n in names},
        seconds=round(report.seconds, 2), tokens_per_second=round(report.per_second * world, 1),
        world_size=world, resumed_languages=report.resumed_groups)
    imp.from_cache = False  # type: ignore[attr-defined]
    if out is not None and rank == 0:
        imp.save(out)
    logger.info("importance of %d tensors over %d languages in %.1f s", len(names), len(languages), report.seconds)
    return imp
