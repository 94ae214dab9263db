"""JobConfig: round trip, overrides, validation errors that name the field."""
import pytest

from meltr_ray.config import FIELD_ALIASES, JobConfig


def test_dict_round_trip():
    cfg = JobConfig().with_overrides({"meta.reg_weight": 0.3, "optim.betas": (0.9, 0.999)})
    again = JobConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.optim.betas == (0.9, 0.999)


def test_short_aliases_map_to_the_paper_symbols():
    cfg = JobConfig().with_overrides({"reg_weight": 0.5, "backbone_lr": 1e-5, "meltr_lr": 2e-4,
                                      "neumann_steps": 5.0, "meta_every": 2})
    assert (cfg.meta.reg_weight, cfg.optim.backbone_lr, cfg.optim.meltr_lr) == (0.5, 1e-5, 2e-4)
    assert cfg.meta.neumann_steps == 5 and isinstance(cfg.meta.neumann_steps, int)
    assert cfg.meta.meta_every == 2
    assert set(FIELD_ALIASES) == {"reg_weight", "backbone_lr", "meltr_lr", "neumann_steps", "meta_every",
                                  "neumann_lr"}


def test_one_table_of_searched_hyperparameters_feeds_aliases_paper_point_and_labels():
    """config.HYPERPARAMETERS is the only table: aliases, the paper point HyperOpt tries first, the live table."""
    from meltr_ray.cluster.progress import SHORT_LABELS
    from meltr_ray.config import HYPERPARAMETERS
    from meltr_ray.spaces import PAPER_VALUES
    symbols = {h.alias: h.symbol for h in HYPERPARAMETERS}
    assert symbols["reg_weight"] == "γ" and symbols["backbone_lr"] == "α" and symbols["meltr_lr"] == "β"
    assert symbols["neumann_steps"] == "K"
    assert FIELD_ALIASES == {h.alias: h.path for h in HYPERPARAMETERS}
    assert PAPER_VALUES == {h.path: h.paper_value for h in HYPERPARAMETERS}
    assert all(SHORT_LABELS[h.alias] == SHORT_LABELS[h.path] == h.symbol for h in HYPERPARAMETERS)


def test_overrides_do_not_mutate_the_original():
    base = JobConfig()
    base.with_overrides({"meta.reg_weight": 0.9})
    assert base.meta.reg_weight == 0.1


@pytest.mark.parametrize("override, message", [
    ({"meta.reg_weight": -0.1}, "meta.reg_weight must be a finite number >= 0, got -0.1"),
    ({"meta.neumann_steps": -1}, "meta.neumann_steps must be a finite number >= 0, got -1"),
    ({"meta.neumann_steps": 1.5}, "meta.neumann_steps must be an integer, got 1.5"),
    ({"optim.backbone_lr": -3e-5}, "optim.backbone_lr must be a finite number >= 0"),
    ({"optim.meltr_lr": float("nan")}, "optim.meltr_lr must be a finite number >= 0, got nan"),
    ({"meta.meta_every": 0}, "meta.meta_every must be an integer >= 1, got 0"),
    ({"meta.neumann_lr": -1.0}, "meta.neumann_lr must be a finite number >= 0"),
    ({"meta.convention": "exact"}, "meta.convention must be one of"),
    ({"meta.clip_norm": 0}, "meta.clip_norm must be > 0 or None"),
    ({"meta.source": "split"}, "meta.source='split' needs data.meta_split"),
    ({"train.max_steps": 0}, "train.max_steps must be an integer >= 1 or None"),
])
def test_validation_names_the_field_and_value(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JobConfig().with_overrides(override).validate()


def test_unknown_fields_are_rejected_by_name():
    with pytest.raises(ValueError, match="unknown config field 'meta.gamma'"):
        JobConfig().with_overrides({"meta.gamma": 1.0})
    with pytest.raises(ValueError, match="unknown config field meta.gamma"):
        JobConfig.from_dict({"meta": {"gamma": 1.0}})
    with pytest.raises(ValueError, match="unknown config section 'trainer'"):
        JobConfig.from_dict({"trainer": {}})
    with pytest.raises(ValueError, match="must look like 'section.field'"):
        JobConfig().with_overrides({"gamma": 1.0})
