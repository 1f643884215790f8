"""ParamSpace: exactly the decoder-block tensors on every family, neuron <-> parameter entries
(zeroing them == silencing the neuron), and the neuron view of parameter regions."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, WIDTH, random_ids, tiny_model

from lape.errors import LapeError
from lape.intervene import intervene
from lape.masks import ParamRegions
from lape.space import ParamSpace
from lape.weights import edit_weights

# written out by hand, independent of the ModuleList search in lape.space
LAYERS_PATH = {"gpt2": "transformer.h", "bloom": "transformer.h", "gptneox": "gpt_neox.layers",
               "opt": "model.decoder.layers"}
# where neuron i sits: (block-relative parameter, axis, offsets of i along the axis)
NEURON_ENTRIES = {
    "llama": [("mlp.down_proj.weight", 1, [0]), ("mlp.gate_proj.weight", 0, [0]), ("mlp.up_proj.weight", 0, [0])],
    "phi3": [("mlp.down_proj.weight", 1, [0]), ("mlp.gate_up_proj.weight", 0, [0, 48])],
    "gpt2": [("mlp.c_proj.weight", 0, [0]), ("mlp.c_fc.weight", 1, [0]), ("mlp.c_fc.bias", 0, [0])],
    "bloom": [("mlp.dense_4h_to_h.weight", 1, [0]), ("mlp.dense_h_to_4h.weight", 0, [0]),
              ("mlp.dense_h_to_4h.bias", 0, [0])],
    "gptneox": [("mlp.dense_4h_to_h.weight", 1, [0]), ("mlp.dense_h_to_4h.weight", 0, [0]),
                ("mlp.dense_h_to_4h.bias", 0, [0])],
    "opt": [("fc2.weight", 1, [0]), ("fc1.weight", 0, [0]), ("fc1.bias", 0, [0])],
}


def _layers_path(family: str) -> str:
    return LAYERS_PATH.get(family, "model.layers")


def _expected_block_params(model, family):
    """{full name: (layer, block-relative name, shape)} from each block's own named_parameters()."""
    path = _layers_path(family)
    blocks = model.get_submodule(path)
    return {f"{path}.{i}.{rel}": (i, rel, tuple(p.shape))
            for i, block in enumerate(blocks) for rel, p in block.named_parameters()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lists_exactly_the_decoder_block_parameters(family):
    model = tiny_model(family)
    space = ParamSpace.of(model)
    expected = _expected_block_params(model, family)
    assert space.layers_path == _layers_path(family)
    assert space.names() == list(expected)  # same names, in named_parameters() order
    for p in space.params:
        assert (p.layer, p.type, p.shape) == expected[p.name]
        assert space.layer_of(p.name) == p.layer
        # norm flag, judged here by the module's name rather than its class
        module_name = p.type.rsplit(".", 1)[0].rsplit(".", 1)[-1]
        assert p.is_norm == ("norm" in module_name or module_name.startswith("ln_"))
    assert space.tensor_types() == [rel for i, rel, _ in expected.values() if i == 0]
    numel = {n: p.numel() for n, p in model.named_parameters()}
    assert space.num_parameters() == sum(numel[n] for n in expected)
    assert space.num_parameters(norms=False) < space.num_parameters()
    # embeddings, final norm and LM head are outside
    outside = set(numel) - set(expected)
    assert model.get_input_embeddings().weight.numel() in {numel[n] for n in outside}
    assert not any(n in space.names() for n in outside)
    assert all(space.names(layer=i) for i in range(3)) and not set(space.names(layer=0)) & set(space.names(layer=1))


def test_norm_filter_leaves_out_norm_tensors():
    space = ParamSpace.of(tiny_model("gemma3"))
    kept = space.names(norms=False)
    assert all("norm" not in n for n in kept)
    assert len(space.names()) - len(kept) == 3 * 6  # 4 block norms + q_norm + k_norm per layer


@pytest.mark.parametrize("family", list(NEURON_ENTRIES))
def test_neuron_mask_marks_the_down_column_and_up_rows(family):
    model = tiny_model(family)
    space = ParamSpace.of(model)
    layer, i = 2, 7
    masks = space.neuron_mask(layer, i)
    prefix = f"{_layers_path(family)}.{layer}."
    assert set(masks) == {prefix + rel for rel, _, _ in NEURON_ENTRIES[family]}
    for rel, axis, offsets in NEURON_ENTRIES[family]:
        mask = masks[prefix + rel]
        assert mask.shape == model.get_parameter(prefix + rel).shape
        want = torch.zeros_like(mask)
        for off in offsets:
            want.select(axis, i + off).fill_(True)
        assert torch.equal(mask, want), rel
    assert sum(int(m.sum()) for m in masks.values()) == space.params_per_neuron(layer)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_zeroing_a_neurons_parameters_equals_silencing_it(family):
    model = tiny_model(family)
    space = ParamSpace.of(model)
    ids = random_ids(2, 6)
    neurons = [(0, 3), (1, 5), (2, WIDTH[family] - 1)]
    masks: dict[str, torch.Tensor] = {}
    for layer, i in neurons:
        masks.update(space.neuron_mask(layer, i))
    with torch.no_grad():
        plain = model(ids).logits
        with intervene(model, {"x": neurons}, deactivate=["x"], check_model=False):
            hooked = model(ids).logits
        with edit_weights(model, masks):
            zeroed = model(ids).logits
        # the down column alone silences the neuron too
        down = {n: m for n, m in masks.items() if n in {space.neuron_slices[la][0].name for la, _ in neurons}}
        with edit_weights(model, down):
            down_only = model(ids).logits
    torch.testing.assert_close(zeroed, hooked, rtol=0, atol=1e-5)
    torch.testing.assert_close(down_only, hooked, rtol=0, atol=1e-5)
    assert (zeroed - plain).abs().max() > 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_inputs_alone_silence_the_neuron_only_with_their_bias(family):
    """Zeroing the up/gate rows (not the down column) silences a neuron because act(0) = 0
    (SiLU, GELU, ReLU); with a bias on the up projection, only if its entry is zeroed too."""
    model = tiny_model(family)
    with torch.no_grad():  # biases start at 0; make them matter (positive: OPT's ReLU keeps them)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(0.5, 1.0)
    space = ParamSpace.of(model)
    ids = random_ids(2, 6)
    down_name = space.neuron_slices[1][0].name
    inputs = {n: m for n, m in space.neuron_mask(1, 4).items() if n != down_name}
    weights_only = {n: m for n, m in inputs.items() if not n.endswith("bias")}
    with torch.no_grad():
        with intervene(model, {"x": [(1, 4)]}, deactivate=["x"], check_model=False):
            hooked = model(ids).logits
        with edit_weights(model, inputs):
            torch.testing.assert_close(model(ids).logits, hooked, rtol=0, atol=1e-5)
        with edit_weights(model, weights_only):
            gap = (model(ids).logits - hooked).abs().max()
    has_bias = len(weights_only) < len(inputs)
    assert has_bias == (family in ("bloom", "gpt2", "gptneox", "opt"))
    assert (gap > 1e-4) if has_bias else (gap <= 1e-5)


def _union_of_neuron_masks(space: ParamSpace, chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every parameter entry of the chosen neurons, as per-tensor masks (layer by layer)."""
    masks: dict[str, torch.Tensor] = {}
    for layer in range(space.num_layers):
        masks.update(space.neuron_mask(layer, chosen[layer].nonzero().squeeze(1)))
    return masks


def _regions(space: ParamSpace, seed: int = 0) -> ParamRegions:
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(2, *space.info(n).shape, generator=g) < 0.3 for n in space.names()}
    return ParamRegions(["a", "b"], masks)


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_neuron_counts_match_counting_each_neurons_mask(family):
    space = ParamSpace.of(tiny_model(family))
    regions = _regions(space)
    counts = regions.neuron_counts(space)
    assert counts.dtype == torch.int64 and counts.shape == (2, 3, WIDTH[family])
    for k, label in enumerate(regions.labels):
        region = regions.mask(label)
        for layer in range(3):
            for i in (0, 11, WIDTH[family] - 1):
                own = space.neuron_mask(layer, i)
                assert counts[k, layer, i] == sum(int((region[n] & m).sum()) for n, m in own.items())


def test_the_neuron_view_round_trips_a_neuron_selection():
    space = ParamSpace.of(tiny_model("gpt2"))
    chosen = torch.zeros(3, 48, dtype=torch.bool)
    chosen[0, 5] = chosen[1, [0, 30]] = chosen[2, 47] = True
    masks = _union_of_neuron_masks(space, chosen)
    partial = space.neuron_mask(2, 9)  # neuron (2, 9): only its down column
    down = space.neuron_slices[2][0].name
    masks[down] = masks[down] | partial[down]
    regions = ParamRegions(["r", "empty"], {n: torch.stack([m, torch.zeros_like(m)]) for n, m in masks.items()},
                           {"method": "test", "fingerprint": {"x": 1}})
    assert torch.equal(regions.to_neuron_sets(space, min_share=1.0).mask("r"), chosen)
    share = 32 / space.params_per_neuron(2)  # GPT-2 tiny: 32 of 65 entries in the down row
    assert regions.to_neuron_sets(space, min_share=share).mask("r")[2, 9]
    assert not regions.to_neuron_sets(space, min_share=share + 0.01).mask("r")[2, 9]
    sets = regions.to_neuron_sets(space, min_share=0.5)
    assert sets.labels == ["r", "empty"] and sets.shape == (3, 48)
    assert torch.equal(sets.mask("r"), chosen) and not sets.mask("empty").any()
    assert sets.meta["fingerprint"] == {"x": 1} and sets.meta["min_share"] == 0.5


def test_bad_input_gets_lape_error():
    space = ParamSpace.of(tiny_model("llama"))
    with pytest.raises(LapeError, match="outside"):
        space.neuron_mask(0, 48)
    with pytest.raises(LapeError, match="layer 3"):
        space.neuron_mask(3, 0)
    with pytest.raises(LapeError, match="not a decoder-block parameter"):
        space.layer_of("model.embed_tokens.weight")
    regions = _regions(space)
    with pytest.raises(LapeError, match="min_share"):
        regions.to_neuron_sets(space, min_share=0.0)
    down = space.neuron_slices[0][0].name
    wrong_shape = ParamRegions(["a"], {down: torch.zeros(1, 3, 3, dtype=torch.bool)})
    with pytest.raises(LapeError, match="regions made for this model"):
        wrong_shape.neuron_counts(space)
    # tensors the space does not map to neurons (embeddings, attention) count as outside
    elsewhere = ParamRegions(["a"], {"model.embed_tokens.weight": torch.ones(1, 96, 32, dtype=torch.bool),
                                     "model.layers.0.self_attn.q_proj.weight": torch.ones(1, 32, 32, dtype=torch.bool)})
    assert elsewhere.neuron_counts(space).sum() == 0
