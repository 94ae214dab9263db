"""UniVL recipes (official / paper / MTL, supplementary Table 4 rows, CMU-MOSI with Align primary) and search
spaces whose metric is a key UniVL's evaluate() really reports."""
from __future__ import annotations

import pytest
import torch
from _univl_common import batch

from meltr_ray.backbones import create_backbone
from meltr_ray.metrics import captioning
from meltr_ray.recipes import find_recipe, get_recipe, list_recipes
from meltr_ray.run import build_run, resolve_job
from meltr_ray.spaces import load_space, space_for

ORIGINAL = ["joint", "align", "cmlm", "cmfm", "decoder"]


def test_every_paper_setting_has_an_official_paper_and_mtl_recipe():
    for base in ("univl_youcook2_retrieval", "univl_msrvtt9k_retrieval", "univl_msrvtt7k_retrieval",
                 "univl_youcook2_captioning", "univl_msrvtt_captioning", "univl_cmu_mosi", "univl_cmu_mosi_align",
                 *(f"univl_youcook2_captioning_{row}" for row in ("ori", "ori_mdecoder", "ori_mjoint",
                                                                  "ori_malign", "ori_all3"))):
        for suffix in ("", "_paper", "_mtl", "_paper_mtl"):
            cfg = resolve_job(get_recipe(base + suffix))
            assert cfg.backbone.name == "univl_base" and cfg.data.val_split == "val"        # B-U4: never test
            assert (cfg.meltr.combiner == "mtl") == suffix.endswith("_mtl")
    assert find_recipe("univl", "captioning") == "univl_youcook2_captioning"
    assert find_recipe("univl_base", "retrieval", "msrvtt7k") == "univl_msrvtt7k_retrieval"
    assert find_recipe("univl", "sentiment") == "univl_cmu_mosi"
    assert len(list_recipes("univl_youcook2_captioning_ori*")) == 20


@pytest.mark.parametrize("row, extra", [("ori", []), ("ori_mdecoder", ["m_decoder"]), ("ori_mjoint", ["m_joint"]),
                                        ("ori_malign", ["m_align"]),
                                        ("ori_all3", ["m_decoder", "m_joint", "m_align"])])
def test_table4_rows_select_their_losses(row, extra):
    cfg = get_recipe(f"univl_youcook2_captioning_{row}")
    assert cfg.backbone.overrides["losses"] == ORIGINAL + extra and cfg.backbone.task == "captioning"
    cfg = cfg.with_overrides({"backbone.name": "univl_tiny", "meltr.d_model": 16, "meltr.d_ffn": 16,
                              "meltr.d_scale": 8, "meltr.n_heads": 2, "train.max_steps": 6})
    run = build_run(cfg)
    assert run.trainer.task_names[0] == "decoder" and sorted(run.trainer.task_names) == sorted(ORIGINAL + extra)


def test_the_supplementary_sentiment_recipe_makes_align_primary():
    cfg = get_recipe("univl_cmu_mosi_align")
    assert cfg.backbone.overrides == {"primary": "align"} and cfg.backbone.task == "sentiment"
    assert "primary" not in get_recipe("univl_cmu_mosi").backbone.overrides


def test_an_mtl_recipe_trains_with_the_plain_sum():
    cfg = get_recipe("univl_youcook2_retrieval_mtl").with_overrides({"backbone.name": "univl_tiny",
                                                                     "train.max_steps": 6})
    run = build_run(cfg)
    metrics = run.trainer.step(batch("retrieval"))
    assert run.trainer.counters.meta_steps == 0 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


@pytest.mark.parametrize("task", ["retrieval", "captioning", "sentiment"])
def test_search_space_metrics_are_keys_univl_evaluate_reports(task, monkeypatch):
    monkeypatch.setattr(captioning, "java_available", lambda: False)
    space = space_for("univl_base", task)
    assert space.source.endswith(f"univl_{task}.yaml")
    torch.manual_seed(0)
    model = create_backbone("univl_tiny", task=task, decoding="greedy")
    with pytest.warns(RuntimeWarning) if task == "captioning" else _nothing():
        metrics = model.evaluate([batch(task, seed=1), batch(task, seed=2)])
    assert space.metric.startswith("val_") and space.metric[4:] in metrics
    assert load_space(f"univl_{task}").mode == "max"


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
