import pytest
import torch
from tiny_models import FAMILIES, WIDTH, random_ids, tiny_model

from lape.errors import LapeError
from lape.intervene import intervene
from lape.masks import NeuronSets, parse_neuron
from lape.space import NeuronSpace


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hook_silencing_equals_zeroing_down_projection_column(family):
    model = tiny_model(family)
    space = NeuronSpace.of(model)
    assert space.shape == (3, WIDTH[family])
    ids = random_ids(2, 7)
    layer, index = 1, 5
    with torch.no_grad():
        plain = model(ids).logits
        with intervene(model, {"x": [(layer, index)]}, deactivate=["x"], check_model=False):
            hooked = model(ids).logits
        cols = space.down_columns(model, layer)
        saved = cols[:, index].clone()
        cols[:, index] = 0.0
        zeroed = model(ids).logits
        cols[:, index] = saved
    torch.testing.assert_close(hooked, zeroed, rtol=0, atol=1e-6)
    assert (hooked - plain).abs().max() > 1e-4  # the neuron mattered: the hook reached it


def test_opt_activation_lives_on_the_decoder_layer():
    space = NeuronSpace.of(tiny_model("opt"))
    assert space.act_paths[0] == "model.decoder.layers.0.activation_fn"
    assert space.down_paths[2] == "model.decoder.layers.2.fc2"


def test_gated_activation_is_the_factor_of_up_proj():
    model = tiny_model("llama")
    space = NeuronSpace.of(model)
    assert space.act_paths[0].endswith("mlp.act_fn")
    mlp = model.model.layers[0].mlp
    x = torch.randn(4, 32)
    captured = {}
    h = mlp.act_fn.register_forward_hook(lambda m, a, o: captured.setdefault("act", o))
    try:
        out = mlp(x)
    finally:
        h.remove()
    torch.testing.assert_close(out, mlp.down_proj(captured["act"] * mlp.up_proj(x)))


def test_shared_activation_module_is_still_per_layer():
    model = tiny_model("llama")
    shared = model.model.layers[0].mlp.act_fn
    for layer in model.model.layers:
        layer.mlp.act_fn = shared
    space = NeuronSpace.of(model)
    assert space.shared_activation_modules(model)
    ids = random_ids(1, 5)
    with torch.no_grad():
        with intervene(model, {"x": [(2, 3)]}, deactivate=["x"], check_model=False):
            hooked = model(ids).logits
        model.model.layers[2].mlp.down_proj.weight[:, 3] = 0
        zeroed = model(ids).logits
    torch.testing.assert_close(hooked, zeroed, rtol=0, atol=1e-6)


def test_pattern_override_and_unknown_architecture():
    model = tiny_model("llama")
    space = NeuronSpace.of(model, pattern="model.layers.{layer}.mlp.act_fn")
    assert space == NeuronSpace.of(model)

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    with pytest.raises(LapeError, match=r"cannot find the MLP activation of Odd: pass pattern="):
        NeuronSpace.of(Odd())
    with pytest.raises(LapeError, match="has no module model.layers.0.mlp.nope"):
        NeuronSpace.of(model, pattern="mlp.nope")


def test_neuron_sets_roundtrip_overlaps_and_counts(tmp_path):
    sets = NeuronSets.from_neurons({"a": [(0, 1), (1, 2), (2, 3)], "b": [(1, 2), (2, 5)]}, (3, 8))
    assert sets.counts() == {"a": 3, "b": 2}
    assert sets.counts_per_layer()["a"] == [1, 1, 1]
    assert sets.overlaps().tolist() == [[3, 1], [1, 2]]
    sets.save(tmp_path / "n")
    back = NeuronSets.load(tmp_path / "n")
    assert back.labels == ["a", "b"] and torch.equal(back.masks, sets.masks)
    assert back.neurons("b") == [(1, 2), (2, 5)]
    with pytest.raises(LapeError, match="outside the 3 x 8 neuron space"):
        NeuronSets.from_neurons({"a": [(3, 0)]}, (3, 8))
    assert parse_neuron("3:17") == (3, 17) and parse_neuron(" 5 : 1024") == (5, 1024)
    for bad in ("3", "3:x", "-1:2", "3,17", ""):
        with pytest.raises(LapeError, match="LAYER:INDEX"):
            parse_neuron(bad)
