"""Perplexity per language, and the deactivation matrix of Tang et al. (`ppl.py`).

Loss is computed from the base model's last hidden state one chunk of positions at a time, so
at most ``chunk_size x vocabulary`` logits exist at once (Gemma 3's vocabulary has 262k entries:
a 4 x 512 batch of full logits would take 2 GB). The head is the model's own output embedding,
followed by Gemma 2's final-logit soft-capping where the config asks for it; the tests check
chunked == unchunked on every architecture family.

:func:`ppl_matrix` evaluates every language on its ``valid`` split unmodified and with each
language's neurons deactivated (rows: deactivated language, columns: evaluated language), and
the same for a random neuron set with as many neurons per layer (seeded). The released code
prints mean NLL while calling it PPL; here both are stored and labelled: ``nll`` (nats/token),
``ppl = exp(nll)``, ``delta_nll`` and ``delta_ppl`` against the unmodified model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts
from .entropy import random_like
from .errors import LapeError
from .intervene import intervene
from .models import fingerprint, model_id_of
from .neurons import NeuronSets, NeuronSpace
from .record import _batched, _input_device

logger = logging.getLogger(__name__)
RANDOM_BASELINES = ("full", "diagonal", "none")


@dataclass(frozen=True)
class PerplexityConfig:
    """Settings of :func:`ppl_matrix`."""

    tokens_per_language: int = 4096  # valid tokens per language; Tang et al. use up to 2^20 on GPU
    seq_len: int = 512  # packed sequence length
    batch_size: int = 4  # sequences per forward pass
    chunk_size: int = 512  # positions whose vocabulary logits exist at once
    seed: int = 0  # corpus shuffling and the random baseline
    split: str = "valid"  # held-out split
    random_baseline: str = "full"  # full: the random set's whole row; diagonal: only its own language
    # (a third of the cost for a square matrix); none

    def __post_init__(self) -> None:
        if self.random_baseline not in RANDOM_BASELINES:
            raise LapeError(f"unknown random_baseline {self.random_baseline!r}: use one of "
                            f"{', '.join(RANDOM_BASELINES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def logits_from_hidden(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's vocabulary logits for final hidden states ``(..., hidden)``."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(getattr(model.config, "text_config", None) or model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def sequence_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 chunk_size: int = 512) -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of predicted tokens of a batch.

    Position ``t`` predicts token ``t+1``; a target counts when both positions are real tokens.
    Only ``chunk_size`` positions' logits exist at a time.

    Args:
        input_ids, attention_mask: ``[B, T]``.

    Returns:
        ``(nll_sum, n_tokens)``.
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state  # (B, T, H)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B*(T-1), H)
    targets = input_ids[:, 1:].reshape(-1)
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).reshape(-1).bool()
    h, targets = h[valid], targets[valid]
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    for s in range(0, h.shape[0], chunk_size):
        logits = logits_from_hidden(model, h[s:s + chunk_size]).float()  # (chunk, V)
        total += F.cross_entropy(logits, targets[s:s + chunk_size], reduction="sum").double()
    return float(total), int(h.shape[0])


def corpus_nll(model: nn.Module, sequences: Iterable[Any], config: PerplexityConfig) -> tuple[float, int]:
    """Mean NLL (nats/token) and token count over a language's sequences."""
    device = _input_device(model)
    total, n = 0.0, 0
    with torch.inference_mode():
        for ids, mask in _batched(sequences, config.batch_size, 0, 1):
            s, c = sequence_nll(model, ids.to(device), mask.to(device), config.chunk_size)
            total, n = total + s, n + c
    return (total / n if n else float("nan")), n


@dataclass
class PerplexityResult:
    """Mean NLL per evaluated language, unmodified and under each deactivation.

    Attributes:
        rows: labels whose neurons were deactivated (row order).
        languages: evaluated languages (column order).
        base_nll: ``[languages]`` nats/token of the unmodified model.
        nll: ``[rows][languages]`` with the row's neurons deactivated.
        random_nll: the same for the random control sets.
        tokens: evaluated tokens per language.
    """

    rows: list[str]
    languages: list[str]
    base_nll: list[float]
    nll: list[list[float]]
    random_nll: list[list[float]]
    tokens: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND = "ppl"

    @staticmethod
    def _delta(m: list[list[float]], base: list[float], ppl: bool) -> list[list[float]]:
        f = math.exp if ppl else (lambda x: x)
        return [[f(v) - f(b) for v, b in zip(row, base)] for row in m]

    @property
    def base_ppl(self) -> list[float]:
        return [math.exp(v) for v in self.base_nll]

    def delta_nll(self, random: bool = False) -> list[list[float]]:
        return self._delta(self.random_nll if random else self.nll, self.base_nll, False)

    def delta_ppl(self, random: bool = False) -> list[list[float]]:
        """PPL change, ``exp(nll) - exp(base_nll)``: the paper's heatmap."""
        return self._delta(self.random_nll if random else self.nll, self.base_nll, True)

    def diagonal_summary(self) -> list[dict[str, Any]]:
        """Per deactivated language: its own PPL change, the mean off-diagonal change, the random one."""
        out = []
        dp, dr = self.delta_ppl(), self.delta_ppl(random=True)
        for i, row in enumerate(self.rows):
            if row not in self.languages:
                continue
            j = self.languages.index(row)
            off = [v for k, v in enumerate(dp[i]) if k != j]
            out.append({"language": row, "own_delta_ppl": dp[i][j],
                        "off_diagonal_mean_delta_ppl": sum(off) / max(len(off), 1),
                        "random_own_delta_ppl": dr[i][j],
                        "own_above_off_diagonal": dp[i][j] > (sum(off) / max(len(off), 1))})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "languages": self.languages, "base_nll": self.base_nll,
                "nll": self.nll, "random_nll": self.random_nll, "tokens": self.tokens,
                "base_ppl": self.base_ppl, "delta_nll": self.delta_nll(), "delta_ppl": self.delta_ppl(),
                "random_delta_nll": self.delta_nll(True), "random_delta_ppl": self.delta_ppl(True),
                "diagonal": self.diagonal_summary()}

    def save(self, path: str | Path) -> Path:
        """Write ``path/ppl.json`` (sidecar + matrices) and one CSV per matrix."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        for name in ("nll", "delta_nll", "delta_ppl", "random_delta_ppl", "random_nll"):
            artifacts.write_table(path / f"{name}", [{"deactivated": r, **dict(zip(self.languages, vals))}
                                                     for r, vals in zip(self.rows, d[name])])
        artifacts.write_table(path / "diagonal", d["diagonal"])
        artifacts.write_json(path / f"{self.KIND}.json", {**self.meta, "result": d})
        return path

    @classmethod
    def load(cls, path: str | Path) -> PerplexityResult:
        meta = artifacts.read_json(Path(path) / f"{cls.KIND}.json")
        r = meta.pop("result")

        def matrix(m: list[list[float | None]]) -> list[list[float]]:  # null: not evaluated
            return [[math.nan if v is None else v for v in row] for row in m]

        return cls(r["rows"], r["languages"], r["base_nll"], matrix(r["nll"]), matrix(r["random_nll"]),
                   r["tokens"], meta)


def ppl_matrix(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    sets: NeuronSets,
    config: PerplexityConfig = PerplexityConfig(),
    *,
    rows: Iterable[str] | None = None,
    space: NeuronSpace | None = None,
    inputs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of every language, unmodified and with each row's neurons deactivated.

    Args:
        model: the model the neuron sets were made for.
        corpus: ``{language: sequences}`` of the held-out split (see :func:`lape.load_corpus`).
        sets: neuron sets; each label in ``rows`` gives one row.
        config: evaluation settings.
        rows: which sets to deactivate (default all labels). Per ``config.random_baseline``
            each row also deactivates a random set of equal size per layer (seeded) on every
            language (``full``), on the row's own language only (``diagonal``; NaN elsewhere)
            or not at all (``none``).

    Returns:
        :class:`PerplexityResult`.
    """
    from tqdm.auto import tqdm

    space = space or NeuronSpace.of(model)
    sets.check_model(model, space)
    languages = list(corpus)
    rows = list(rows) if rows is not None else list(sets.labels)
    mode = config.random_baseline
    randoms = random_like(sets, seed=config.seed) if mode != "none" else None
    # the languages each row's random set is evaluated on
    random_cols = {row: [lang for lang in languages if mode == "full" or (mode == "diagonal" and lang == row)]
                   for row in rows}
    n_evals = len(languages) * (1 + len(rows)) + sum(len(c) for c in random_cols.values())
    bar = tqdm(total=n_evals, desc="perplexity", unit="eval", disable=not progress)
    tokens: dict[str, int] = {}

    def evaluate(lang: str) -> float:
        nll, n = corpus_nll(model, corpus[lang], config)
        tokens[lang] = n
        bar.update(1)
        return nll

    base = [evaluate(lang) for lang in languages]
    nll, rnd = [], []
    for row in rows:
        with intervene(model, sets, deactivate=[row], space=space):
            nll.append([evaluate(lang) for lang in languages])
        random_row = {lang: float("nan") for lang in languages}
        if random_cols[row]:  # empty without a baseline, or when the row's language is not evaluated
            with intervene(model, randoms, deactivate=[row], space=space):
                random_row.update({lang: evaluate(lang) for lang in random_cols[row]})
        rnd.append([random_row[lang] for lang in languages])
    bar.close()
    meta = {"format": f"lape.{PerplexityResult.KIND}", "format_version": artifacts.FORMAT_VERSION,
            "model_id": model_id_of(model), "fingerprint": fingerprint(model), "config": config.to_dict(),
            "neurons": {"method": sets.meta.get("method"), "counts": sets.counts()},
            "random_seed": config.seed, "inputs": dict(inputs or {})}
    return PerplexityResult(rows, languages, base, nll, rnd, tokens, meta)
