"""ALPRO's MSVD-QA recipes and its search space, checked by the validator."""
from __future__ import annotations

from meltr_ray.recipes import find_recipe, get_recipe
from meltr_ray.run import resolve_job
from meltr_ray.spaces import load_space, paper_point, space_for


def test_the_msvd_qa_recipes():
    cfg = resolve_job(get_recipe("alpro_msvd_qa"))
    assert (cfg.backbone.name, cfg.backbone.task) == ("alpro_base", "qa_oe")
    assert cfg.backbone.overrides == {"num_answers": 1000, "resize_temporal": "nearest"}
    assert (cfg.optim.backbone_lr, cfg.optim.betas, cfg.optim.grad_clip, cfg.train.epochs) == (5e-5, (0.9, 0.98),
                                                                                               20.0, 15)
    assert (cfg.meltr.d_model, cfg.meltr.n_heads, cfg.optim.meltr_lr, cfg.meta.neumann_steps) == (512, 8, 1e-4, 3)
    assert (cfg.data.num_frames, cfg.data.image_size, cfg.data.max_text_len) == (16, 224, 40)
    assert resolve_job(get_recipe("alpro_msvd_qa_pem")).backbone.task == "qa_oe_pem"
    assert find_recipe("alpro", "qa_oe") == "alpro_msvd_qa" and find_recipe("alpro", "qa_oe_pem") == "alpro_msvd_qa_pem"
    demo = resolve_job(get_recipe("alpro_demo"))
    assert (demo.backbone.name, demo.data.num_frames, demo.data.image_size) == ("alpro_tiny", 4, 32)


def test_the_search_space_validates_and_holds_the_paper_and_alpro_settings():
    space = load_space("alpro_qa")
    assert space_for("alpro_base", "qa_oe").source == space.source == space_for("alpro_tiny", "qa_oe_pem").source
    assert space.metric == "val_accuracy" and paper_point(space) is not None
    assert space.contains("backbone_lr", 5e-5)
