"""Running top-k activating contexts of chosen neurons (the examples on a neuron card).

For every chosen neuron :class:`TopContexts` keeps, over all tokens seen so far, the ``k``
largest activations, where each happened (a token *serial*: sequence index x ``SERIAL_STRIDE``
+ position) and the context around it: ``before`` tokens before and ``after`` tokens after the
firing token, with the neuron's activation on every token of that window, so that a card can
shade the whole context and not only the peak. Beside them it sums what ``lape record`` sums
(firing counts, firing and plain activation sums, tokens) for the chosen neurons only.

Memory is O(neurons x k x window) whatever the corpus size. The order is total: activation
descending, then serial ascending, so ties (exact zeros of ReLU models) resolve the same way in
one process and over ``torchrun`` ranks; the ranks' states are merged by gathering every rank's
top-k and keeping the top-k of the union, which is the top-k over all tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..neurons.stats import firing_sums
from ..runningstats import RunningSums

SERIAL_STRIDE = 1 << 20  # positions per sequence in a serial (longer than MAX_SEQ_LEN)
EMPTY = -1  # the token id (and serial) of an unused slot or a window position off the sequence
TOP_NAMES = ("values", "serials", "tokens", "acts")  # the per-slot tensors, merged by top-k


def top_order(values: torch.Tensor, serials: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[N, k]`` of the ``k`` best slots per row of ``values [N, M]``: largest value first,
    the smaller serial first among equal values."""
    by_serial = serials.argsort(dim=1, stable=True)
    by_value = values.gather(1, by_serial).argsort(dim=1, descending=True, stable=True)
    return by_serial.gather(1, by_value[:, :k])


def top_in_column_order(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[N, k]`` of the ``k`` largest entries per row of ``values [N, M]``, best first,
    ties to the earlier column: :func:`top_order` for rows whose columns are already in serial
    order, without sorting the whole row (``topk`` finds the k-th value; only the entries equal
    to it need the column order)."""
    kth = values.topk(k, dim=1).values[:, -1:]  # [N, 1]
    above = values > kth
    tied = values == kth
    need = k - above.sum(1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(1) <= need))  # exactly k per row, the earliest ties
    idx = chosen.nonzero()[:, 1].reshape(values.shape[0], k)  # per row, in column order
    by_value = values.gather(1, idx).argsort(dim=1, descending=True, stable=True)
    return idx.gather(1, by_value)


def merge_top(parts: Sequence[Mapping[str, torch.Tensor]], k: int) -> dict[str, torch.Tensor]:
    """The top-k of several top-k states (``values``/``serials`` ``[N, k_i]``, ``tokens``/``acts``
    ``[N, k_i, W]``): the top-k of the union of what they saw."""
    cat = {name: torch.cat([p[name] for p in parts], dim=1) for name in TOP_NAMES}
    idx = top_order(cat["values"], cat["serials"], k)
    window = idx[..., None].expand(-1, -1, cat["tokens"].shape[-1])
    return {"values": cat["values"].gather(1, idx), "serials": cat["serials"].gather(1, idx),
            "tokens": cat["tokens"].gather(1, window), "acts": cat["acts"].gather(1, window)}


class TopContexts(RunningSums):
    """Running top-k contexts and firing sums of chosen neurons for one group (a language).

    Args:
        columns: ``{layer: LongTensor of neuron indices}``; neurons are ordered by layer, then
            by the order given (the card order).
        k: contexts kept per neuron.
        before, after: context tokens kept before and after the firing token.
        device: where the state lives (the model's device).

    Use: :meth:`hook` as the activation hook (it only keeps the chosen columns), then
    :meth:`add_batch` after each forward.
    """

    def __init__(self, columns: Mapping[int, torch.Tensor], k: int, before: int, after: int,
                 device: torch.device) -> None:
        self.layers = sorted(columns)
        self.columns = {layer: columns[layer].to(device) for layer in self.layers}
        n = sum(int(c.numel()) for c in self.columns.values())
        width = before + 1 + after
        self.k, self.before, self.after = k, before, after
        self.captured: dict[int, torch.Tensor] = {}
        super().__init__({
            "values": torch.full((n, k), float("-inf"), device=device),
            "serials": torch.full((n, k), EMPTY, dtype=torch.int64, device=device),
            "tokens": torch.full((n, k, width), EMPTY, dtype=torch.int64, device=device),
            "acts": torch.zeros(n, k, width, device=device),
            "fire_counts": torch.zeros(n, dtype=torch.int64, device=device),
            "fire_sums": torch.zeros(n, dtype=torch.float64, device=device),
            "act_sums": torch.zeros(n, dtype=torch.float64, device=device),
            "token_counts": torch.zeros(1, dtype=torch.int64, device=device),
        })

    def hook(self, layer: int, act: torch.Tensor) -> None:
        """Activation hook: keep this layer's chosen columns ``[B, T, n_layer]`` of the batch."""
        if layer in self.columns:
            self.captured[layer] = act.index_select(-1, self.columns[layer]).float()

    def add_batch(self, ids: torch.Tensor, counted: torch.Tensor, sequences: torch.Tensor) -> None:
        """Fold the captured activations of one batch in.

        Args:
            ids: the batch's token ids ``[B, T]``.
            counted: bool ``[B, T]``, the positions that count (real tokens but the first).
            sequences: ``[B]`` the global index of each sequence in its group's stream.
        """
        # [B, T, N] (some models, OPT, run their MLP on flattened [B*T, hidden] rows)
        acts = torch.cat([self.captured.pop(layer).reshape(*ids.shape, -1) for layer in self.layers], dim=-1)
        device = acts.device
        counted = counted.to(device, torch.bool)
        ids = ids.to(device)
        s = self.sums
        real = acts[counted]  # [n, N]
        act_sum, fire_sum, fire_count = firing_sums(real, (0,))
        s["act_sums"] += act_sum
        s["fire_sums"] += fire_sum
        s["fire_counts"] += fire_count
        s["token_counts"] += real.shape[0]

        batch, length, n = acts.shape
        flat = acts.masked_fill(~counted[..., None], float("-inf")).reshape(batch * length, n).T  # [N, B*T]
        serial = (sequences.to(device)[:, None] * SERIAL_STRIDE + torch.arange(length, device=device)).reshape(-1)
        k = self.k
        values = torch.cat([s["values"], flat], dim=1)
        serials = torch.cat([s["serials"], serial.expand(n, -1)], dim=1)
        serials = serials.masked_fill(values == float("-inf"), EMPTY)  # an unused slot stays empty
        # the kept slots hold earlier serials than this batch (a rank's batches come in stream
        # order), sorted by value then serial, and the batch is in serial order: the columns are
        # already in tie order
        idx = top_in_column_order(values, k)  # [N, k]: < k an old slot, else k + flat position
        new = idx >= k
        flat_pos = (idx - k).clamp(min=0)
        b, t = flat_pos // length, flat_pos % length
        offsets = torch.arange(-self.before, self.after + 1, device=device)
        pos = t[..., None] + offsets  # [N, k, W]
        inside = (pos >= 0) & (pos < length)
        pos_c = pos.clamp(0, length - 1)
        b_w = b[..., None].expand_as(pos_c)
        inside &= counted[b_w, pos_c]
        neuron = torch.arange(n, device=device)[:, None, None].expand_as(pos_c)
        win_tokens = torch.where(inside, ids[b_w, pos_c], EMPTY)
        win_acts = torch.where(inside, acts[b_w, pos_c, neuron], 0.0)
        old_slot = idx.clamp(max=k - 1)[..., None].expand_as(pos_c)
        keep = new[..., None]
        s["tokens"] = torch.where(keep, win_tokens, s["tokens"].gather(1, old_slot))
        s["acts"] = torch.where(keep, win_acts, s["acts"].gather(1, old_slot))
        s["values"] = values.gather(1, idx)
        s["serials"] = serials.gather(1, idx)

    def reduce_ranks(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums are all-reduced; the top-k slots of every rank are gathered and merged."""
        dist = torch.distributed
        world = dist.get_world_size()
        super().reduce_ranks({name: state[name] for name in state if name not in TOP_NAMES})  # in place
        gathered: list[dict[str, torch.Tensor]] = [{} for _ in range(world)]
        for name in TOP_NAMES:
            parts = [torch.empty_like(state[name]) for _ in range(world)]
            dist.all_gather(parts, state[name].contiguous())
            for r in range(world):
                gathered[r][name] = parts[r]
        state.update(merge_top(gathered, self.k))
        return state
