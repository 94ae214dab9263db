"""Search-space files: every shipped file is valid and holds the paper's setting; errors name the bad key."""
from __future__ import annotations

import pytest
import yaml

from meltr_ray.spaces import SpaceError, list_spaces, load_space, paper_point, parse_space, space_for

VALID = {"metric": "val_r1", "mode": "max",
         "params": {"reg_weight": {"distribution": "loguniform", "low": 0.05, "high": 10.0}}}


def test_shipped_spaces_are_valid_and_contain_the_paper_setting():
    names = list_spaces()
    assert {"default", "demo", "violet_retrieval", "violet_qa"} <= set(names)
    for name in names:
        space = load_space(name)
        for gamma in (0.1, 0.3, 0.5):
            assert space.contains("reg_weight", gamma), name
        if name == "demo":      # α is the recipe's in every demo trial: MELTR and its MTL baseline share it
            assert "backbone_lr" not in space.params and space.baseline == {"meltr.combiner": "mtl"}
        assert space.contains("meltr_lr", 1e-4), name
        # a space may leave α, K and meta_every to the recipe (resnet: a from-scratch α, not 3e-5); when it
        # searches them, the paper's value lies inside
        for param, value in (("backbone_lr", 3e-5), ("neumann_steps", 3), ("meta_every", 3)):
            assert param not in space.params or space.contains(param, value), (name, param)
        assert paper_point(space) is not None, name


def test_space_for_picks_the_family_file_or_the_default():
    assert space_for("violet_base", "qa").metric == "val_accuracy"
    assert space_for("resnet32", "classification").source.endswith("resnet_classification.yaml")
    assert space_for("violet_tiny", "action").source.endswith("default.yaml")


@pytest.mark.parametrize("change, key", [
    ({"searcher": "grid"}, "searcher"),
    ({"mode": "maximise"}, "mode"),
    ({"metrc": "val_r1"}, "metrc"),
    ({"num_samples": 0}, "num_samples"),
    ({"scheduler": {"type": "asha", "grace": 1}}, "scheduler.grace"),
    ({"params": {"reg_wieght": {"distribution": "uniform", "low": 0, "high": 1}}}, "params.reg_wieght"),
    ({"params": {"reg_weight": {"distribution": "uniform", "low": 1.0, "high": 1.0}}}, "params.reg_weight"),
    ({"params": {"reg_weight": {"distribution": "uniform", "low": 2.0, "high": 1.0}}}, "params.reg_weight"),
    ({"params": {"reg_weight": {"distribution": "choice", "values": []}}}, "params.reg_weight.values"),
    ({"params": {"reg_weight": {"distribution": "normal", "low": 0, "high": 1}}}, "params.reg_weight.distribution"),
    ({"params": {"reg_weight": {"distribution": "uniform", "low": 0}}}, "params.reg_weight.high"),
    ({"params": {"reg_weight": {"distribution": "uniform", "low": 0, "high": 1, "step": 2}}},
     "params.reg_weight.step"),
    ({"params": {"backbone_lr": {"distribution": "loguniform", "low": 0.0, "high": 1e-3}}}, "params.backbone_lr.low"),
    ({"params": {"backbone_lr": {"distribution": "uniform", "low": -1.0, "high": 1e-3}}}, "params.backbone_lr"),
    ({"params": {"neumann_steps": {"distribution": "randint", "low": 1.5, "high": 4}}}, "params.neumann_steps"),
    ({"params": {"reg_weight": {"distribution": "choice", "values": [0.1]},
                 "meta.reg_weight": {"distribution": "choice", "values": [0.3]}}}, "params.meta.reg_weight"),
    ({"params": {}}, "params"),
])
def test_bad_space_errors_name_the_key(change, key):
    with pytest.raises(SpaceError) as err:
        parse_space({**VALID, **change}, source="bad.yaml")
    assert f"bad.yaml: {key}:" in str(err.value)


def test_space_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**VALID, "params": {"gamma": {"distribution": "choice", "values": [1]}}}))
    with pytest.raises(SpaceError, match=r"mine\.yaml: params\.gamma: unknown hyperparameter"):
        load_space(str(path))
    with pytest.raises(SpaceError, match="no such file"):
        load_space("no_such_space")


def test_dotted_config_paths_are_accepted():
    space = parse_space({**VALID, "params": {"meta.clip_norm": {"distribution": "uniform", "low": 1, "high": 20}}})
    assert space.contains("meta.clip_norm", 12.0)
