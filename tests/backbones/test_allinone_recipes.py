"""All-in-one's recipes (official hyperparameters, 9k and 7k) and its search space, checked by the validator."""
from __future__ import annotations

import pytest

from meltr_ray.recipes import find_recipe, get_recipe
from meltr_ray.run import resolve_job
from meltr_ray.spaces import load_space, paper_point, space_for


@pytest.mark.parametrize("name", ["allinone_msrvtt9k_retrieval", "allinone_msrvtt7k_retrieval"])
def test_the_official_recipes_carry_the_released_hyperparameters(name):
    cfg = resolve_job(get_recipe(name))
    assert (cfg.backbone.name, cfg.backbone.task) == ("allinone_base", "retrieval")
    o, m = cfg.optim, cfg.meta
    assert (o.optimizer, o.backbone_lr, o.betas, o.warmup_ratio, o.schedule) == ("adamw", 3e-4, (0.9, 0.98), 0.1,
                                                                                "linear")
    assert (o.meltr_lr, o.backbone_weight_decay, o.meltr_weight_decay) == (1e-4, 0.01, 3e-5)
    assert (m.meta_every, m.reg_weight, m.reg_form, m.clip_norm, m.neumann_steps) == (5, 0.1, "abs", 1.0, 0)
    assert (m.scope, m.source, m.buffer_size, m.eviction) == ("all", "replay", 10, "weighted")
    assert cfg.meltr.preset == "allinone" and cfg.train.batch_size == 16 and cfg.cluster.num_workers == 8
    assert (cfg.data.num_frames, cfg.data.image_size, cfg.data.max_text_len) == (3, 224, 40)   # from the spec


def test_the_family_finds_its_recipes_and_the_tiny_variant_runs_the_same_one():
    assert find_recipe("allinone", "retrieval") == "allinone_msrvtt9k_retrieval"
    assert find_recipe("allinone", "retrieval", "msrvtt7k") == "allinone_msrvtt7k_retrieval"
    tiny = resolve_job(get_recipe("allinone_msrvtt9k_retrieval").with_overrides({"backbone.name": "allinone_tiny"}))
    assert (tiny.data.num_frames, tiny.data.image_size, tiny.data.max_text_len) == (3, 32, 12)
    with pytest.raises(ValueError, match="data.num_frames = 4 is above the model's maximum 3"):
        resolve_job(get_recipe("allinone_demo").with_overrides({"data.num_frames": 4}))


def test_the_search_space_validates_and_holds_the_paper_and_official_settings():
    space = load_space("allinone_retrieval")
    assert space_for("allinone_base", "retrieval").source == space.source
    assert space.metric == "val_r1" and space.mode == "max"
    assert paper_point(space) is not None                              # HyperOpt starts at the paper's point
    official = {"backbone_lr": 3e-4, "neumann_steps": 0, "meta_every": 5, "reg_weight": 0.1, "meltr_lr": 1e-4}
    assert all(space.contains(name, value) for name, value in official.items())
