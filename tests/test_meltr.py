"""MELTR module: official sizes, the MTL start, variants, baselines, task weights, bad input."""
import pytest
import torch

from meltr_ray.config import JobConfig, MeltrConfig
from meltr_ray.core.bilevel import regulariser
from meltr_ray.core.hypergrad import hypergradient
from meltr_ray.core.loop import build_trainer
from meltr_ray.core.meltr import (MELTR, PRESETS, FixedWeights, LinearWeights, MTLSum, build_combiner,
                                  stack_losses)

from toy_models import ToyMultiTask, toy_batches

# Parameter counts of the official MELTR configurations (reference §1.2), computed from the official sizes.
OFFICIAL_PARAM_COUNTS = {"univl": 562_688, "violet_retrieval": 1_712_128, "violet_qa": 430_336,
                         "allinone": 116_736}


@pytest.mark.parametrize("start", ["mtl", "official"])
@pytest.mark.parametrize("preset", sorted(OFFICIAL_PARAM_COUNTS))
def test_preset_parameter_counts_match_official(preset, start):
    model = MELTR.from_preset(preset, start=start)
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
    model = MELTR(3, d_model=16, d_ffn=16, d_scale=8, start="official").double().eval()
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
    """Supp. Table 2: with TE only, ∇_w MELTR = 0 (the paper's untrainable ablation). With the MTL start the
    TE-only variant is MTL plus a constant: every weight stays 1 whatever φ is."""
    model = MELTR(3, d_model=16, d_ffn=16, d_scale=8, embedding="te", start="official").eval()
    assert torch.all(model.task_weights(torch.rand(3)) == 0)
    assert model.scale_embedding is None
    residual = MELTR(3, d_model=16, d_ffn=16, d_scale=8, embedding="te").eval()
    torch.nn.init.normal_(residual.head.weight)
    assert torch.all(residual.task_weights(torch.rand(3)) == 1)


def test_scale_embedding_only_variant_has_no_task_embedding():
    model = MELTR(3, d_model=16, d_ffn=16, d_scale=8, embedding="se", start="official").eval()
    assert model.task_embedding is None
    # Without task identity the output is symmetric in the losses.
    losses = torch.tensor([0.3, 1.0, 2.0])
    torch.testing.assert_close(model(losses), model(losses.flip(0)))


def test_linear_architecture_variant():
    model = MELTR(3, d_model=16, d_ffn=16, d_scale=8, architecture="linear")
    assert model(torch.rand(3)).shape == ()
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


def test_allinone_preset_uses_normal_init():
    model = MELTR.from_preset("allinone", start="official")
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.3)
    assert torch.all(model.encoder[0].linear1.bias == 0)
    assert torch.all(MELTR.from_preset("allinone").head.weight == 0)     # the MTL start zeroes W_o only
    assert MELTR.from_preset("allinone").encoder[0].linear1.weight.std().item() == pytest.approx(0.02, rel=0.3)


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


# ---- the MTL start (issue 9.1) -------------------------------------------------------------------------------
def _losses_across_scales(seed: int, num_tasks: int, rows: int = 16) -> torch.Tensor:
    """(rows, T) losses log-uniform over 10⁻³ … 10², the range real backbones produce."""
    g = torch.Generator().manual_seed(1000 + seed)
    return 10 ** (5 * torch.rand(rows, num_tasks, generator=g) - 3)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_new_meltr_is_mtl_for_every_preset_and_seed(preset):
    """Output Σ_t ℓ_t and every ∂MELTR/∂ℓ_t = 1, in train mode (dropout on) and eval mode, 20 seeds."""
    num_tasks = PRESETS[preset]["num_tasks"] or 3
    for seed in range(20):
        torch.manual_seed(seed)
        model = MELTR.from_preset(preset, num_tasks=num_tasks)
        losses = _losses_across_scales(seed, num_tasks)
        for mode in (True, False):
            model.train(mode)
            torch.testing.assert_close(model(losses), losses.sum(-1), rtol=0.02, atol=0.0)
            weights = model.task_weights(losses)
            assert torch.all((weights - 1).abs() < 0.02), (preset, seed, weights)


def test_the_official_start_does_not_start_at_mtl():
    """The hazard issue 9 fixes, measured on the official start: small random-signed task weights."""
    torch.manual_seed(0)
    losses = _losses_across_scales(0, 3)
    weights = torch.stack([MELTR.from_preset("violet_retrieval", start="official").eval().task_weights(losses)
                           for _ in range(5)])
    assert weights.abs().max() < 0.5 and (weights < 0).any()


def test_negative_losses_are_summed_like_mtl():
    """UniVL's CMLM/CMFM losses can be negative: the residual path adds them as they are."""
    model = MELTR.from_preset("univl").eval()
    losses = torch.tensor([2.0, 0.5, -1.5, -0.2, 3.0, 1e-3, 40.0, -7.0])
    torch.testing.assert_close(model(losses), losses.sum())
    torch.testing.assert_close(model.task_weights(losses), torch.ones(8))


def test_official_start_is_the_official_forward():
    """start='official': out = W_o · mean_t EncoderLayer(MLP(ℓ_t) + TE_t), built here from PyTorch's layer."""
    torch.manual_seed(3)
    ours = MELTR(3, d_model=32, d_ffn=64, d_scale=16, start="official").eval()
    layer = torch.nn.TransformerEncoderLayer(32, 8, 64, batch_first=True).eval()
    layer.load_state_dict({k.removeprefix("encoder.0."): v for k, v in ours.state_dict().items()
                           if k.startswith("encoder.0.")})
    losses = torch.tensor([[0.3, 2.0, 7.0]])
    tokens = ours.scale_embedding(losses.unsqueeze(-1)) + ours.task_embedding.weight
    with torch.no_grad():
        official = torch.nn.functional.linear(layer(tokens).mean(1), ours.head.weight).squeeze(-1)
        torch.testing.assert_close(ours(losses), official, rtol=1e-5, atol=1e-6)
        # the default start is the same network plus Σℓ (once W_o is non-zero)
        mtl = MELTR(3, d_model=32, d_ffn=64, d_scale=16)
        mtl.load_state_dict(ours.state_dict())
        torch.testing.assert_close(mtl.eval()(losses), official + losses.sum(-1), rtol=1e-5, atol=1e-5)


def test_regulariser_measures_the_learned_correction():
    """With the residual, γ·|Σℓ − MELTR(ℓ)| = γ·|W_o · mean H|: 0 at the start, the correction's size later."""
    model = MELTR.from_preset("meltr_tiny", num_tasks=3).eval()
    losses = torch.tensor([0.5, 3.0, 0.01])
    assert regulariser(losses, model(losses)).item() == 0.0
    torch.nn.init.normal_(model.head.weight)
    with torch.no_grad():
        correction = model.head(model.encoder[0](model.embed(losses.unsqueeze(0))).mean(1)).squeeze()
        torch.testing.assert_close(regulariser(losses, model(losses)), correction.abs())


def test_first_meta_step_moves_w_o_and_the_next_one_the_whole_transformer():
    """At W_o = 0 the mixed product reaches W_o only (the module docstring explains why); one Adam step on
    W_o later every parameter with a path to ∂MELTR/∂ℓ gets hypergradient."""
    torch.manual_seed(0)
    model, meltr = ToyMultiTask(depth=2), MELTR(3, d_model=16, d_ffn=16, d_scale=8, n_heads=2, dropout=0.0)
    train, meta = toy_batches(2)
    optimizer = torch.optim.Adam(meltr.parameters(), lr=1e-3)
    names = [n for n, _ in meltr.named_parameters()]
    reached = []
    for _ in range(2):
        inner = meltr(torch.stack(list(model(train).values())))
        outer = model(meta, tasks=["primary"])["primary"]
        grads = hypergradient(outer, inner, list(model.parameters()), list(meltr.parameters()),
                              neumann_steps=0, neumann_lr=None)
        reached.append({n for n, g in zip(names, grads) if g.abs().sum() > 0})
        for p, g in zip(meltr.parameters(), grads):
            p.grad = g
        optimizer.step()
    assert reached[0] == {"head.weight"}
    # norm2.bias shifts every token equally and has no path to ∂MELTR/∂ℓ (see test_hypergrad)
    assert reached[1] == set(names) - {"encoder.0.norm2.bias"}


def test_first_inner_step_with_the_default_start_equals_an_mtl_step():
    cfg = JobConfig().with_overrides({"meltr.preset": "meltr_tiny", "optim.backbone_lr": 1e-2,
                                      "meta.meta_every": 100}).validate()
    batch = toy_batches(1, seed=4)[0]
    after, metrics = {}, {}
    for name in ("mtl", "meltr"):
        torch.manual_seed(0)
        model = ToyMultiTask(depth=2)
        combiner = build_combiner(MeltrConfig(**{**vars(cfg.meltr), "combiner": name}), 3)
        metrics[name] = build_trainer(model, combiner, cfg).step(batch)
        after[name] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(after["meltr"], after["mtl"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert metrics["meltr"] == pytest.approx(metrics["mtl"])
    assert metrics["meltr"]["weight_harmful"] == 1.0


def test_linear_weights_start_at_one():
    model = LinearWeights(3)
    losses = _losses_across_scales(0, 3)
    torch.testing.assert_close(model.weights(losses), torch.ones_like(losses))
    torch.testing.assert_close(model(losses), losses.sum(-1))


def test_meltr_tiny_preset_takes_the_backbones_number_of_losses():
    model = build_combiner(MeltrConfig(preset="meltr_tiny"), 5)
    assert model.num_tasks == 5 and model.encoder[0].n_heads == 2
    assert model.head.in_features == 32 and model.scale_embedding[0].out_features == 16
    with pytest.raises(ValueError, match="'meltr_tiny' takes its number of losses from the caller"):
        MELTR.from_preset("meltr_tiny")


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


def test_presets_cover_the_official_four_and_a_tiny_one():
    assert set(PRESETS) == set(OFFICIAL_PARAM_COUNTS) | {"meltr_tiny"}


def test_bad_start_names_the_field():
    with pytest.raises(ValueError, match=r"meltr.start must be one of \['mtl', 'official'\], got 'warm'"):
        JobConfig().with_overrides({"meltr.start": "warm"}).validate()
    with pytest.raises(ValueError, match=r"start \(meltr.start\) must be one of .*got 'warm'"):
        build_combiner(MeltrConfig(start="warm"), 3)
