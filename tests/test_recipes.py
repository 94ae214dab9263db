"""Recipes: complete, valid configs with the official (reference §4.1) and paper (Supp §A.3) values."""
from __future__ import annotations

import pytest
import torch

from meltr_ray.backbones import create_backbone
from meltr_ray.backbones.violet.model import TASK_LOSSES
from meltr_ray.config import JobConfig
from meltr_ray.core.meltr import PRESETS
from meltr_ray.recipes import find_recipe, get_recipe, list_recipes

# name: (task, text length, batch/GPU, epochs, backbone lr, backbone wd, MELTR lr, MELTR wd) — reference §4.1
OFFICIAL = {
    "violet_msrvtt7k_retrieval": ("retrieval", 25, 5, 20, 3e-6, 1e-3, 3e-6, 1e-3),
    "violet_msrvtt9k_retrieval": ("retrieval", 25, 5, 20, 3e-6, 1e-3, 3e-6, 1e-3),
    "violet_tgif_action": ("qa_mc", 40, 3, 20, 6e-6, 1e-3, 1e-4, 1e-4),
    "violet_tgif_transition": ("qa_mc", 40, 3, 20, 3e-6, 1e-3, 1e-4, 1e-4),
    "violet_tgif_frame": ("qa_oe", 25, 5, 20, 3e-5, 1e-4, 1e-4, 1e-4),
    "violet_msvd_qa": ("qa_oe", 25, 5, 30, 1.2e-5, 1e-3, 1e-4, 1e-4),
}


def test_every_recipe_is_listed_and_valid():
    names = list_recipes("violet*")
    expected = set(OFFICIAL) | {"violet_kinetics400"}
    assert expected | {n + "_paper" for n in expected} | {"violet_demo"} <= set(names)
    for name in names:
        cfg = get_recipe(name)
        assert isinstance(cfg, JobConfig) and cfg.name == name
        assert cfg.backbone.task in TASK_LOSSES
        if cfg.meltr.preset is not None:
            assert PRESETS[cfg.meltr.preset]["num_tasks"] == len(TASK_LOSSES[cfg.backbone.task])
        assert JobConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_hyperparameters(name):
    task, text_len, batch, epochs, lr, wd, meltr_lr, meltr_wd = OFFICIAL[name]
    cfg = get_recipe(name)
    assert (cfg.backbone.name, cfg.backbone.task) == ("violet_base", task)
    assert (cfg.data.max_text_len, cfg.train.batch_size, cfg.train.epochs) == (text_len, batch, epochs)
    o = cfg.optim
    assert (o.optimizer, o.backbone_lr, o.backbone_weight_decay, o.meltr_lr, o.meltr_weight_decay) == \
        ("adamw", lr, wd, meltr_lr, meltr_wd)
    assert (o.schedule, o.betas, o.grad_clip) == ("constant", (0.9, 0.98), None)
    m = cfg.meta
    assert (m.meta_every, m.clip_norm, m.reg_weight, m.neumann_steps, m.include_direct) == (3, 12.0, 0.1, 0, False)
    assert (cfg.data.num_frames, cfg.data.image_size) == (5, 224)
    assert cfg.meltr.preset == ("violet_retrieval" if task == "retrieval" else "violet_qa")


def test_answer_vocabularies():
    assert get_recipe("violet_tgif_frame").backbone.overrides["size_vocab"] == 1540
    assert get_recipe("violet_msvd_qa").backbone.overrides["size_vocab"] == 1000
    assert get_recipe("violet_kinetics400").backbone.overrides["num_classes"] == 400


@pytest.mark.parametrize("name", sorted(OFFICIAL) + ["violet_kinetics400"])
def test_paper_variant(name):
    cfg = get_recipe(name + "_paper")
    o, m = cfg.optim, cfg.meta
    assert (o.optimizer, o.backbone_lr, o.meltr_lr, o.schedule) == ("adam", 3e-5, 1e-4, "linear")
    assert (m.neumann_steps, m.reg_weight) == (3, 0.1)
    assert (cfg.meltr.n_heads, cfg.meltr.n_layers, cfg.meltr.d_model) == (8, 1, 512)
    assert cfg.train.epochs == (40 if cfg.backbone.task == "retrieval" else 20)


def test_recipes_are_fresh_copies_and_unknown_names_fail():
    get_recipe("violet_msvd_qa").backbone.overrides["size_vocab"] = 3
    assert get_recipe("violet_msvd_qa").backbone.overrides["size_vocab"] == 1000
    with pytest.raises(ValueError, match="'violet_nope'"):
        get_recipe("violet_nope")


def test_find_recipe():
    assert find_recipe("violet", "retrieval", "msrvtt9k") == "violet_msrvtt9k_retrieval"
    assert find_recipe("violet_base", "qa_oe", "tgif_frame", paper=True) == "violet_tgif_frame_paper"
    assert find_recipe("violet", "action") == "violet_kinetics400"
    with pytest.raises(ValueError, match="captioning"):
        find_recipe("violet", "captioning")


def test_demo_recipe_builds_a_backbone_that_runs_on_its_geometry():
    cfg = get_recipe("violet_demo")
    model = create_backbone(cfg.backbone.name, task=cfg.backbone.task, **cfg.backbone.overrides)
    d, b, length = cfg.data, 2, cfg.data.max_text_len
    ids = torch.randint(5, 200, (b, length))
    ids[:, 0], ids[:, -1] = 2, 3                           # the demo vocabulary's [CLS] / [SEP]
    grid = d.image_size // 32
    batch = {"video_id": ["a", "b"], "text_ids": ids, "text_mask": torch.ones(b, length, dtype=torch.long),
             "frames": torch.randint(0, 256, (b, d.num_frames, d.image_size, d.image_size, 3), dtype=torch.uint8),
             "vq_ids": torch.randint(0, 8, (b, d.num_frames, grid, grid))}
    assert list(model(batch)) == model.task_names == ["vtm", "mtm", "mvm"]
