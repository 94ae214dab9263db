"""MELTR module: official sizes, variants, baselines, task weights, bad input."""
import pytest
import torch

from meltr_ray.config import MeltrConfig
from meltr_ray.core.meltr import (MELTR, PRESETS, FixedWeights, LinearWeights, MTLSum, build_combiner,
                             stack_losses)

# Parameter counts of the official MELTR configurations (reference §1.2), computed from the official sizes.
OFFICIAL_PARAM_COUNTS = {"univl": 562_688, "violet_retrieval": 1_712_128, "violet_qa": 430_336,
                         "allinone": 116_736}


@pytest.mark.parametrize("preset", sorted(OFFICIAL_PARAM_COUNTS))
def test_preset_parameter_counts_match_official(preset):
    model = MELTR.from_preset(preset)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAM_COUNTS[preset]


def test_state_dict_names_match_pytorch_encoder_layer():
    """Official MELTR weights (built on nn.TransformerEncoderLayer) must load into ours."""
    ours = MELTR.from_preset("violet_retrieval")
    ref = torch.nn.TransformerEncoderLayer(512, 8, 512, batch_first=True)
    encoder_keys = {k.removeprefix("encoder.0.") for k in ours.state_dict() if k.startswith("encoder.0.")}
    assert encoder_keys == set(ref.state_dict())


def test_encoder_layer_matches_pytorch_numerically():
    torch.manual_seed(0)
    ours = MELTR(3, d_model=32, d_ffn=64, d_scale=16, n_heads=8).eval()
    ref = torch.nn.TransformerEncoderLayer(32, 8, 64, batch_first=True).eval()
    ref.load_state_dict({k.removeprefix("encoder.0."): v for k, v in ours.state_dict().items()
                         if k.startswith("encoder.0.")})
    tokens = ours.embed(torch.rand(2, 3))
    with torch.no_grad():
        torch.testing.assert_close(ours.encoder[0](tokens), ref(tokens), rtol=1e-5, atol=1e-5)


def test_forward_shapes_and_batched_equals_unbatched():
    model = MELTR(4, d_model=32, d_ffn=32, d_scale=8).eval()
    losses = torch.rand(5, 4)
    out = model(losses)
    assert out.shape == (5,)
    assert model(losses[2]).shape == ()
    torch.testing.assert_close(model(losses[2]), out[2])


def test_task_weights_are_the_gradient_of_the_output():
    torch.manual_seed(1)
    model = MELTR(3, d_model=16, d_ffn=16, d_scale=8).double().eval()
    losses = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    weights = model.task_weights(losses)
    eps = 1e-6
    for t in range(3):
        bump = torch.zeros(3, dtype=torch.float64)
        bump[t] = eps
        fd = (model(losses + bump) - model(losses - bump)) / (2 * eps)
        assert weights[t].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)


def test_output_depends_on_raw_losses_and_is_not_detached():
    model = MELTR(2, d_model=16, d_ffn=16, d_scale=8)
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    model(losses).backward()
    assert losses.grad is not None and torch.all(losses.grad != 0)


def test_task_embedding_only_variant_ignores_the_losses():
    """Supp. Table 2: with TE only, ∇_w MELTR = 0 (the paper's untrainable ablation)."""
    model = MELTR(3, d_model=16, d_ffn=16, d_scale=8, embedding="te").eval()
    assert torch.all(model.task_weights(torch.rand(3)) == 0)
    assert model.scale_embedding is None


def test_scale_embedding_only_variant_has_no_task_embedding():
    model = MELTR(3, d_model=16, d_ffn=16, d_scale=8, embedding="se").eval()
    assert model.task_embedding is None
    # Without task identity the output is symmetric in the losses.
    losses = torch.tensor([0.3, 1.0, 2.0])
    torch.testing.assert_close(model(losses), model(losses.flip(0)))


def test_linear_architecture_variant():
    model = MELTR(3, d_model=16, d_ffn=16, d_scale=8, architecture="linear")
    assert model(torch.rand(3)).shape == ()
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


def test_allinone_preset_uses_normal_init():
    model = MELTR.from_preset("allinone")
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.3)
    assert torch.all(model.encoder[0].linear1.bias == 0)


def test_baselines():
    losses = torch.tensor([1.0, 2.0, 3.0])
    assert MTLSum(3)(losses).item() == pytest.approx(6.0)
    assert not MTLSum(3).has_meta_params
    fixed = FixedWeights(3, [1.0, 0.5, 0.0])
    assert fixed(losses).item() == pytest.approx(2.0)
    torch.testing.assert_close(fixed.task_weights(losses), torch.tensor([1.0, 0.5, 0.0]))
    linear = LinearWeights(3)
    assert linear.has_meta_params
    torch.testing.assert_close(linear.task_weights(losses), linear.weights(losses).detach())


@pytest.mark.parametrize("combiner", ["meltr", "mtl", "fixed", "linear"])
def test_build_combiner_from_config(combiner):
    cfg = MeltrConfig(combiner=combiner, d_model=16, d_ffn=16, d_scale=8)
    model = build_combiner(cfg, 3)
    assert model(torch.rand(3)).shape == ()


def test_build_combiner_preset():
    model = build_combiner(MeltrConfig(preset="violet_qa"), 4)
    assert model.num_tasks == 4


# ---- bad input ---------------------------------------------------------------------------------------------
def test_wrong_number_of_losses_for_a_preset_names_the_field():
    model = MELTR.from_preset("violet_retrieval")
    with pytest.raises(ValueError, match=r"losses must have shape \(3,\).*num_tasks=3.*got \(4,\)"):
        model(torch.rand(4))
    with pytest.raises(ValueError, match="meltr.preset 'violet_retrieval' combines 3 losses"):
        build_combiner(MeltrConfig(preset="violet_retrieval"), 4)


def test_unknown_preset_and_variant():
    with pytest.raises(ValueError, match="unknown MELTR preset 'nope'"):
        MELTR.from_preset("nope")
    with pytest.raises(ValueError, match="embedding must be"):
        MELTR(3, embedding="both")
    with pytest.raises(ValueError, match="d_model .* divisible by n_heads"):
        MELTR(3, d_model=30, n_heads=8)


def test_stack_losses_rejects_non_scalar_and_missing():
    with pytest.raises(ValueError, match="loss 'b' must be a scalar tensor, got \\(2,\\)"):
        stack_losses({"a": torch.tensor(1.0), "b": torch.ones(2)}, ["a", "b"])
    with pytest.raises(ValueError, match="missing task 'c'"):
        stack_losses({"a": torch.tensor(1.0)}, ["a", "c"])
    assert stack_losses({"b": torch.tensor(2.0), "a": torch.tensor(1.0)}, ["a", "b"]).tolist() == [1.0, 2.0]


def test_presets_cover_the_official_four():
    assert set(PRESETS) == set(OFFICIAL_PARAM_COUNTS)
