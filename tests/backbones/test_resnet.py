"""The CIFAR ResNet family: ResNet-32's size, the three losses, replay-stable augmentation draws, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meltr_ray.backbones import create_backbone, get_spec, tiny_variants
from meltr_ray.backbones.resnet import tasks
from meltr_ray.backbones.resnet.checkpoint import filter_resnet_state_dict
from meltr_ray.backbones.resnet.model import RESNET32

VARIANTS = ("resnet32", "resnet_digits", "resnet_tiny")


def batch_for(name: str, size: int = 8, seed: int = 0) -> dict:
    return get_spec(name).example_batch("classification", size, torch.Generator().manual_seed(seed))


def expected_resnet_params(blocks: int, widths, classes: int, in_channels: int = 3) -> int:
    """Conv weights (no bias) + BN (γ, β) + the class head, counted from the architecture's definition."""
    count = in_channels * widths[0] * 9 + 2 * widths[0]
    c_in = widths[0]
    for width in widths:
        for _ in range(blocks):
            count += c_in * width * 9 + width * width * 9 + 4 * width
            c_in = width
    return count + widths[-1] * classes + classes


def test_resnet32_has_the_published_size():
    model = create_backbone("resnet32")
    trunk_and_class_head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("rotation_head"))
    assert trunk_and_class_head == expected_resnet_params(5, (16, 32, 64), 100) == 470_004     # ~0.47 M
    ten_way = create_backbone("resnet32", num_classes=10)
    assert sum(p.numel() for n, p in ten_way.named_parameters() if not n.startswith("rotation_head")) == 464_154
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 32                          # 6n + 1 conv layers + the class head = 32 for n = 5


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_gives_the_three_losses_in_order_and_only_those_asked(name):
    model = create_backbone(name)
    batch = batch_for(name)
    losses = model(batch)
    assert list(losses) == list(get_spec(name).task("classification").losses) == ["ce", "mixup", "rotation"]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    alone = model(batch, tasks=["ce"])
    assert list(alone) == ["ce"] and torch.equal(alone["ce"], losses["ce"])
    with pytest.raises(ValueError, match="unknown ResNet loss"):
        model(batch, tasks=["mlm"])


def test_a_replayed_batch_re_forwards_identically_whatever_the_global_rng_did():
    model = create_backbone("resnet_tiny")
    batch = batch_for("resnet_tiny", size=16)
    first = model(batch)
    torch.rand(1000), np.random.rand(1000)              # anything else drawing random numbers in between
    again = model(batch)
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = dict(batch, aug_seed=batch["aug_seed"] + 1)
    moved = model(other)
    assert torch.equal(moved["ce"], first["ce"])         # the primary loss has no draws
    assert not torch.equal(moved["mixup"], first["mixup"]) and not torch.equal(moved["rotation"], first["rotation"])


def test_draws_follow_beta_alpha_alpha_and_cover_every_rotation():
    seeds = [torch.arange(8) + 100 * i for i in range(400)]
    lams = {a: np.array([tasks.augmentation_draws(s, a).lam for s in seeds]) for a in (0.2, 1.0, 20.0)}
    for alpha, values in lams.items():                  # Beta(α, α): mean ½, variance 1 / (4(2α + 1))
        assert abs(values.mean() - 0.5) < 0.05
        assert values.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.3)
    draws = tasks.augmentation_draws(torch.arange(64), 1.0)
    assert sorted(draws.partner.tolist()) == list(range(64)) and set(draws.rotation.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan")])
def test_mixup_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError, match="mixup_alpha"):
        create_backbone("resnet_tiny", mixup_alpha=alpha)


def test_mixup_with_itself_is_cross_entropy_and_rotation_turns_the_images():
    model = create_backbone("resnet_tiny")
    batch = batch_for("resnet_tiny")
    x, y = model.pixels(batch["images"]), batch["label"]
    own = tasks.AugmentationDraws(0.3, torch.arange(len(y)), torch.zeros(len(y), dtype=torch.long))
    assert torch.allclose(tasks.mixup_loss(model, x, y, own), model(batch, tasks=["ce"])["ce"], atol=1e-6)
    turns = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    rotated = tasks.rotate(x, turns)
    for image, k, got in zip(x, turns, rotated):
        assert torch.equal(got, torch.from_numpy(np.rot90(image.numpy(), int(k), axes=(1, 2)).copy()))


def test_rotation_loss_targets_are_the_drawn_turns():
    model = create_backbone("resnet_tiny")
    batch = batch_for("resnet_tiny")
    draws = tasks.augmentation_draws(batch["aug_seed"], model.cfg.mixup_alpha)
    x = tasks.rotate(model.pixels(batch["images"]), draws.rotation)
    expected = F.cross_entropy(model.rotation_head(model.features(x)), draws.rotation)
    assert torch.allclose(model(batch, tasks=["rotation"])["rotation"], expected)


def test_evaluate_is_accuracy_over_every_example():
    model = create_backbone("resnet_tiny")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.arange(10.0) == 3)          # always predicts class 3
    batches = [dict(batch_for("resnet_tiny", size=n, seed=n)) for n in (5, 7)]
    labels = torch.cat([b["label"] for b in batches])
    assert model.evaluate(batches) == {"accuracy": pytest.approx(100.0 * float((labels == 3).float().mean()))}
    bad = dict(batches[0], label=torch.full((5,), -1))
    with pytest.raises(ValueError, match="label"):
        model.evaluate([bad])


def test_checkpoint_filter_takes_its_own_and_the_common_cifar_layout():
    model, source = create_backbone("resnet_tiny"), create_backbone("resnet_tiny")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    filtered, report = filter_resnet_state_dict(state, model)
    model.load_state_dict(filtered, strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    assert "module." in report.notes[0]

    def cifar_name(key: str) -> str:                     # stem.0 → conv1, stages.s → layer{s+1}, classifier → linear
        key = key.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.").replace("classifier.", "linear.")
        return key.replace("stages.0.", "layer1.").replace("stages.1.", "layer2.").replace("stages.2.", "layer3.")

    cifar = {cifar_name(k): v for k, v in source.state_dict().items() if not k.startswith("rotation_head")}
    cifar["linear.weight"], cifar["linear.bias"] = torch.zeros(100, 16), torch.zeros(100)      # a 100-way head
    fresh = create_backbone("resnet_tiny")
    filtered, report = filter_resnet_state_dict(cifar, fresh, "cifar.pt")
    fresh.load_state_dict(filtered, strict=True)
    assert torch.equal(fresh.stages[2][0].conv2.weight, source.stages[2][0].conv2.weight)
    assert set(report.initialised) >= {"classifier.weight", "classifier.bias", "rotation_head.weight"}
    with pytest.raises(ValueError, match="surprise"):
        filter_resnet_state_dict({**cifar, "surprise.weight": torch.zeros(1)}, fresh, "cifar.pt")


def test_pretrained_path_loads_a_saved_model(tmp_path):
    source = create_backbone("resnet_tiny")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "r.pt")
    loaded = create_backbone("resnet_tiny", pretrained=str(tmp_path / "r.pt"))
    assert torch.equal(loaded.classifier.weight, source.classifier.weight)


@pytest.mark.parametrize("name", VARIANTS)
def test_spec_describes_the_image_data_the_model_reads(name):
    spec = get_spec(name)
    data = spec.task("classification").data
    model = create_backbone(name)
    assert (data.modality, data.items) == ("image", "rows")
    assert tuple(model.cfg.mean) == tuple(data.mean) and tuple(model.cfg.std) == tuple(data.std)
    assert set(batch_for(name)) >= set(data.batch_keys)
    assert batch_for(name)["images"].shape[1] == data.image_size
    scope = spec.meta_scope(model)
    from meltr_ray.core.hypergrad import select_scope
    chosen = select_scope(model, scope)
    assert 0 < len(chosen) < len(list(model.parameters()))
    assert {id(p) for p in model.classifier.parameters()} <= {id(p) for p in chosen}
    assert get_spec("resnet32").task("classification").data.image_size == 32 and RESNET32.blocks_per_stage == 5
    # CIFAR: crop + flip; digits: none (a mirrored digit is another shape, and the experiment uses none)
    assert data.augment == ("none" if name == "resnet_digits" else "crop_flip")
    with pytest.raises(ValueError, match="data.augment"):
        data.__class__(modality="image", augment="flip").check(name)


def test_resnet_tiny_is_in_the_contract_suite_and_trains_with_meltr():
    from meltr_ray import build_run
    from meltr_ray.config import JobConfig
    assert "resnet_tiny" in tiny_variants()
    cfg = JobConfig().with_overrides({"backbone.name": "resnet_tiny", "backbone.task": "classification",
                                      "train.max_steps": 6, "optim.backbone_lr": 1e-3, "meta.meta_every": 2,
                                      "meltr.d_model": 16, "meltr.d_ffn": 16, "meltr.d_scale": 8,
                                      "meltr.n_heads": 2, "meta.neumann_steps": 2})
    run = build_run(cfg)
    batches = [batch_for("resnet_tiny", size=8, seed=s) for s in range(6)]
    metrics = run.fit(lambda epoch: batches)
    assert run.trainer.counters.meta_steps == 3 and run.trainer.counters.skipped_meta == 0
    assert np.isfinite(metrics["train_loss"])


def test_only_the_clean_forward_moves_the_batchnorm_running_statistics():
    model = create_backbone("resnet_tiny")
    batch = batch_for("resnet_tiny", size=16)
    clean = create_backbone("resnet_tiny")
    clean.load_state_dict(model.state_dict())
    model(batch)                                        # ce + mixup + rotation
    clean(batch, tasks=["ce"])                          # the clean forward alone
    for (name, a), b in zip(model.state_dict().items(), clean.state_dict().values()):
        assert torch.equal(a, b), name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(batch, tasks=["mixup", "rotation"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.stem[1].momentum == 0.1                # restored
