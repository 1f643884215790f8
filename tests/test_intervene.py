"""intervene(): deactivation == zeroed down-projection columns, exact activation values, clean-up,
nesting, generate(), and refusing neuron sets of another model."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import WIDTH, random_ids, tiny_model

from lape.errors import LapeError
from lape.fingerprint import fingerprint
from lape.intervene import batch_edits, intervene
from lape.masks import NeuronSets
from lape.neurons.stats import ActivationStats

NEURONS = {"x": [(0, 3), (0, 17), (1, 5), (2, 0), (2, 40)], "y": [(1, 5), (1, 6), (2, 11)]}


def _act_modules(model):
    if hasattr(model, "transformer"):
        return [block.mlp.act for block in model.transformer.h]
    return [layer.mlp.act_fn for layer in model.model.layers]


def _zero_columns(model, neurons):
    """A copy of ``model`` with each neuron's input column of its down projection zeroed."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer, index in neurons:
            if hasattr(model, "transformer"):  # GPT-2 Conv1D: weight [in = neurons, out]
                model.transformer.h[layer].mlp.c_proj.weight[index, :] = 0.0
            else:  # nn.Linear: weight [out, in = neurons]
                model.model.layers[layer].mlp.down_proj.weight[:, index] = 0.0
    return model


class _Capture:
    """Forward hooks on every activation module recording the output each one sees."""

    def __init__(self, model):
        self.seen: dict[int, list[torch.Tensor]] = {}
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(_act_modules(model))]

    def _hook(self, layer):
        def hook(module, args, output):
            self.seen.setdefault(layer, []).append(output.detach().clone())
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _stats_for(model, seed=0) -> ActivationStats:
    width = WIDTH["llama"]
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 50, (2, 3, width), generator=g)
    fire_sums = torch.rand(2, 3, width, generator=g, dtype=torch.float64) * counts
    act_sums = fire_sums - torch.rand(2, 3, width, generator=g, dtype=torch.float64) * 30
    return ActivationStats(["x", "y"], counts, torch.tensor([100, 80]), act_sums, fire_sums,
                           {"fingerprint": fingerprint(model), "model_id": "tiny-llama"})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_deactivation_equals_zeroing_down_projection_columns(family):
    model = tiny_model(family)
    ids = random_ids(2, 6)
    with torch.no_grad():
        plain = model(ids).logits
        with intervene(model, NEURONS, deactivate=["x", "y"], check_model=False):
            hooked = model(ids).logits
        zeroed = _zero_columns(model, NEURONS["x"] + NEURONS["y"])(ids).logits
    torch.testing.assert_close(hooked, zeroed, rtol=0, atol=1e-5)
    assert (hooked - plain).abs().max() > 1e-3
    with torch.no_grad():  # the hooks are gone: the model is unchanged again
        assert torch.equal(model(ids).logits, plain)


@pytest.mark.parametrize("rule", ["firing_mean", "mean"])
def test_activation_sets_the_recorded_value_times_strength(rule):
    model = tiny_model("llama")
    stats = _stats_for(model)
    sets = NeuronSets.from_neurons(NEURONS, (3, WIDTH["llama"]), {"fingerprint": fingerprint(model)})
    # the values computed here from the raw tensors: firing mean = fire_sums / fire_counts,
    # mean = act_sums / tokens (language "y" is axis 1)
    if rule == "firing_mean":
        table = stats.fire_sums[1] / stats.fire_counts[1].double()
    else:
        table = stats.act_sums[1] / 80.0
    before = _Capture(model)  # registered first: sees the unedited activation
    try:
        with intervene(model, sets, activate=["y"], stats=stats, value=rule, strength=2.5):
            after = _Capture(model)  # registered after lape's hooks: sees the edited one
            try:
                with torch.no_grad():
                    model(random_ids(2, 5))
            finally:
                after.remove()
    finally:
        before.remove()
    chosen = {layer: [i for la, i in NEURONS["y"] if la == layer] for layer in range(3)}
    for layer in range(3):
        a, b = after.seen[layer][0], before.seen[layer][0]
        idx = chosen[layer]
        others = [i for i in range(WIDTH["llama"]) if i not in idx]
        assert torch.equal(a[..., others], b[..., others])
        for i in idx:
            want = torch.full_like(a[..., i], float(table[layer, i] * 2.5))
            torch.testing.assert_close(a[..., i], want)


def test_fixed_value_scale_and_nested_interventions_compose():
    model = tiny_model("llama")
    ids = random_ids(1, 4)
    before = _Capture(model)
    try:
        with intervene(model, NEURONS, activate={"x": 3.0}, check_model=False):
            with intervene(model, NEURONS, scale={"x": 2.0}, check_model=False):
                after = _Capture(model)
                try:
                    with torch.no_grad():
                        model(ids)
                finally:
                    after.remove()
    finally:
        before.remove()
    for layer, index in NEURONS["x"]:  # the inner edit applies after the outer one: 3 x 2
        assert torch.equal(after.seen[layer][0][..., index], torch.full((1, 4), 6.0))
    untouched = after.seen[1][0][..., 7]
    assert torch.equal(untouched, before.seen[1][0][..., 7])


def test_batch_edits_give_each_sequence_its_own_intervention():
    model = tiny_model("llama")
    stats = _stats_for(model)
    sets = NeuronSets.from_neurons(NEURONS, (3, WIDTH["llama"]), {"fingerprint": fingerprint(model)})
    ids = random_ids(1, 6)
    requests = [{"deactivate": ["x"], "activate": ["y"], "strength": 2.0}, {},
                {"activate": ["x"]}, {"scale": {"y": 3.0}}, {"deactivate": ["y"], "scale": {"x": 0.5}}]
    edits = batch_edits(sets, requests, stats=stats)
    with torch.no_grad(), intervene(model, edits=edits, check_model=False):
        batched = model(ids.repeat(len(requests), 1)).logits
    for b, request in enumerate(requests):
        with torch.no_grad(), intervene(model, sets, stats=stats, **request):
            single = model(ids).logits[0]
        torch.testing.assert_close(batched[b], single, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain = model(ids).logits[0]
    torch.testing.assert_close(batched[1], plain, rtol=1e-5, atol=1e-5)  # the empty request: untouched
    assert not torch.allclose(batched[0], plain, atol=1e-3)


def test_nested_deactivations_equal_zeroing_both_sets():
    model = tiny_model("llama")
    ids = random_ids(2, 5)
    with torch.no_grad():
        with intervene(model, NEURONS, deactivate=["x"], check_model=False):
            with intervene(model, NEURONS, deactivate=["y"], check_model=False):
                both = model(ids).logits
            only_x = model(ids).logits  # the inner hooks are gone, the outer ones stay
        zeroed_both = _zero_columns(model, NEURONS["x"] + NEURONS["y"])(ids).logits
        zeroed_x = _zero_columns(model, NEURONS["x"])(ids).logits
    torch.testing.assert_close(both, zeroed_both, rtol=0, atol=1e-5)
    torch.testing.assert_close(only_x, zeroed_x, rtol=0, atol=1e-5)


def _hook_counts(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in _act_modules(model)] + \
           [(len(layer._forward_hooks), len(layer._forward_pre_hooks)) for layer in model.model.layers]


@pytest.mark.parametrize("shared", [False, True])
def test_hooks_are_removed_after_an_exception(shared):
    model = tiny_model("llama")
    if shared:  # one activation object for all layers: lape adds layer pre-hooks too
        for layer in model.model.layers:
            layer.mlp.act_fn = model.model.layers[0].mlp.act_fn
    start = _hook_counts(model)
    with pytest.raises(KeyboardInterrupt):
        with intervene(model, NEURONS, deactivate=["x"], scale={"y": 2.0}, check_model=False):
            assert _hook_counts(model) != start
            with torch.no_grad():
                model(random_ids(1, 3))
            raise KeyboardInterrupt  # not even an Exception: the hooks must still go
    assert _hook_counts(model) == start


def test_intervention_reaches_every_step_of_generate():
    model = tiny_model("llama")
    prompt_len, steps = 5, 6
    ids = random_ids(1, prompt_len, seed=3)
    gen = dict(max_new_tokens=steps, do_sample=False, pad_token_id=0, eos_token_id=None)
    fixed = {"x": 40.0, "y": -40.0}  # (1, 5) is in both sets: the later edit (y) wins
    want = {(layer, i): value for label, value in fixed.items() for layer, i in NEURONS[label]}
    with torch.no_grad():
        plain = model.generate(ids, **gen)
        before = _Capture(model)  # registered before lape's hooks: sees the unedited activations
        try:
            with intervene(model, NEURONS, activate=fixed, check_model=False):
                after = _Capture(model)  # registered after lape's hooks: sees the edited ones
                try:
                    steered = model.generate(ids, **gen)
                finally:
                    after.remove()
                # greedy decoding by hand, full forward every step (no cache): the same tokens
                manual = ids
                for _ in range(steps):
                    nxt = model(manual).logits[:, -1].argmax(-1, keepdim=True)
                    manual = torch.cat([manual, nxt], 1)
        finally:
            before.remove()
    assert steered.shape == (1, prompt_len + steps)
    for layer in range(3):
        calls = after.seen[layer]
        # one forward per decoding step: the prompt, then one new position per generated token
        # (the last generated token is not fed back)
        assert [c.shape[1] for c in calls] == [prompt_len] + [1] * (steps - 1)
        edited = [i for (la, i) in want if la == layer]
        others = [i for i in range(WIDTH["llama"]) if i not in edited]
        assert edited
        for step, (call, raw) in enumerate(zip(calls, before.seen[layer][:steps], strict=True)):
            for i in edited:  # the set value at every position of every step
                assert torch.equal(call[..., i], torch.full_like(call[..., i], want[(layer, i)])), (layer, step, i)
                assert not torch.equal(raw[..., i], call[..., i])
            assert torch.equal(call[..., others], raw[..., others])  # the rest untouched
    assert not torch.equal(steered[:, prompt_len:], plain[:, prompt_len:])  # steering changed the tokens
    assert torch.equal(steered, manual)
    with torch.no_grad():  # and the hooks are gone afterwards
        assert torch.equal(model.generate(ids, **gen), plain)


def test_neuron_sets_of_another_model_are_refused():
    made_on = tiny_model("llama", seed=0)
    other = tiny_model("llama", seed=1)
    sets = NeuronSets.from_neurons(NEURONS, (3, WIDTH["llama"]),
                                   {"fingerprint": fingerprint(made_on), "model_id": "tiny-llama", "method": "lape"})
    with pytest.raises(LapeError) as err:
        with intervene(other, sets, deactivate=["x"]):
            pass
    msg = str(err.value)
    assert fingerprint(made_on)["checksum"][:8] in msg and fingerprint(other)["checksum"][:8] in msg
    assert "\n" not in msg
    with intervene(made_on, sets, deactivate=["x"]):  # its own model is fine
        pass
    stats = _stats_for(made_on)  # stats of another model are refused as well
    with pytest.raises(LapeError, match="the activation stats was made with"):
        with intervene(other, NEURONS, activate=["x"], stats=stats, check_model=True):
            pass


def test_bad_requests_are_one_line_errors():
    model = tiny_model("llama")
    with pytest.raises(LapeError, match="needs recorded stats"):
        with intervene(model, NEURONS, activate=["x"], check_model=False):
            pass
    with pytest.raises(LapeError, match="no neuron set for 'z'"):
        with intervene(model, NEURONS, deactivate=["z"], check_model=False):
            pass
    wrong = NeuronSets.from_neurons({"x": [(0, 1)]}, (4, WIDTH["llama"]))
    with pytest.raises(LapeError, match="4 layers x 48 neurons but this model has 3 x 48"):
        with intervene(model, wrong, deactivate=["x"]):
            pass


@pytest.mark.parametrize("family", ["llama", "opt"])  # OPT runs its MLP on flattened [batch * T, n] rows
def test_positions_last_edits_only_the_last_position(family):
    """``positions="last"`` changes the last position's activations and leaves every earlier
    position as the unedited model computes it, with per-sequence values ``[batch, 1, n]``; the
    result equals a hand-written hook that edits ``[:, -1]`` only."""
    from lape.hooks import activation_hooks
    from lape.intervene import Edit
    from lape.space import NeuronSpace

    model = tiny_model(family)
    space = NeuronSpace.of(model)
    ids = random_ids(2, 7, seed=5)
    n = space.neurons_per_layer
    factors = torch.tensor([[0.0], [3.0]])[:, :, None].expand(2, 1, n)  # sequence 0 suppressed, 1 x3
    edit = Edit(1, torch.arange(n), "mul", factors)

    def acts_under(ctx):
        seen = {}
        with torch.no_grad(), ctx, activation_hooks(model, space, lambda layer, a: seen.__setitem__(layer, a.reshape(2, 7, n))):
            logits = model(input_ids=ids).logits
        return seen, logits

    plain, plain_logits = acts_under(intervene(model, edits=[]))
    edited, logits = acts_under(intervene(model, edits=[edit], positions="last"))
    assert torch.equal(edited[0], plain[0])  # an earlier layer is untouched
    assert torch.equal(edited[1][:, :-1], plain[1][:, :-1])  # earlier positions of the edited layer too
    torch.testing.assert_close(edited[1][:, -1], plain[1][:, -1] * factors[:, 0])
    assert torch.equal(logits[:, :-1], plain_logits[:, :-1])  # causal: earlier outputs unchanged
    assert not torch.allclose(logits[:, -1], plain_logits[:, -1])

    def by_hand(layer, act):
        if layer != 1:
            return None
        shaped = act.reshape(2, 7, n).clone()
        shaped[:, -1] = shaped[:, -1] * factors[:, 0]
        return shaped.reshape(act.shape)

    with torch.no_grad(), activation_hooks(model, space, by_hand):
        want = model(input_ids=ids).logits
    torch.testing.assert_close(logits, want)
    with pytest.raises(LapeError, match="positions must be 'all' or 'last'"):
        with intervene(model, edits=[edit], positions="first"):
            pass
