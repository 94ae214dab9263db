"""The backbone registry and specs refuse bad input with a ValueError naming the backbone, the task and the field.

Registration checks the spec (no losses, a MELTR preset of another size, a data default above the model's
limit, a duplicate name); :func:`meltr_ray.run.resolve_job` checks a config against the spec before anything
is built (an unknown task, ``num_frames`` above the model's maximum); ``import_plugin`` names a module that
cannot be imported.
"""
from __future__ import annotations

import pytest

from meltr_ray.backbones import (BackboneSpec, DataSpec, TaskSpec, get_spec, import_plugin, list_backbones,
                                 register_backbone, tiny_variants, unregister_backbone)
from meltr_ray.config import JobConfig
from meltr_ray.run import resolve_job

PLUGIN = "tests.fixtures.plugin_family"
import_plugin(PLUGIN)


def _build(task="t", pretrained=None, **overrides):
    raise AssertionError("never built in these tests")


def spec(losses=("main", "aux"), preset=None, data=None, **changes) -> BackboneSpec:
    task = TaskSpec(losses=losses, meltr_preset=preset, data=data or DataSpec(modality="features", items="rows"))
    return BackboneSpec(family="probe", tasks={"t": task}, build=_build, **changes)


@pytest.fixture
def registered():
    """Names a test registers; unregistered afterwards so the registry stays as the other tests expect."""
    names: list = []
    yield names
    for name in names:
        unregister_backbone(name)


def test_a_task_without_losses_is_refused():
    with pytest.raises(ValueError, match=r"backbone 'probe_tiny', task 't': losses is empty"):
        register_backbone("probe_tiny", spec=spec(losses=()))
    assert "probe_tiny" not in list_backbones()


def test_a_preset_for_another_number_of_losses_is_refused():
    with pytest.raises(ValueError, match=r"backbone 'probe_tiny', task 't': meltr_preset 'violet_retrieval' "
                                         r"combines 3 losses but the task has 2"):
        register_backbone("probe_tiny", spec=spec(preset="violet_retrieval"))
    with pytest.raises(ValueError, match=r"task 't': meltr_preset 'no_such_preset' is not one of"):
        register_backbone("probe_tiny", spec=spec(preset="no_such_preset"))
    assert "probe_tiny" not in list_backbones()


@pytest.mark.parametrize("data, field", [
    (DataSpec(num_frames=9, max_frames=8), r"data.num_frames = 9 is above the model's maximum 8"),
    (DataSpec(text_len=65, text_positions=64), r"data.text_len = 65 is above the model's maximum 64"),
    (DataSpec(modality="audio"), r"data.modality must be one of"),
    (DataSpec(items="paragraphs"), r"data.items must be one of"),
])
def test_inconsistent_data_spec_is_refused(data, field):
    with pytest.raises(ValueError, match=rf"backbone 'probe_tiny', task 't': {field}"):
        register_backbone("probe_tiny", spec=spec(data=data))


def test_default_task_must_be_one_of_the_tasks():
    with pytest.raises(ValueError, match=r"backbone 'probe_tiny': spec.default_task 'other'"):
        register_backbone("probe_tiny", spec=spec(default_task="other"))


def test_duplicate_registration_is_refused_and_keeps_the_first(registered):
    original = get_spec("violet_tiny")
    with pytest.raises(ValueError, match=r"backbone 'violet_tiny' is already registered \(family 'violet'\)"):
        register_backbone("violet_tiny", spec=spec())
    assert get_spec("violet_tiny") is original
    registered.append("probe_tiny")
    register_backbone("probe_tiny", spec=spec())
    with pytest.raises(ValueError, match="'probe_tiny' is already registered"):
        register_backbone("probe_tiny", spec=spec(), build=lambda task="t", pretrained=None: None)


def test_register_needs_a_spec():
    with pytest.raises(ValueError, match=r"register_backbone\('probe_tiny'\) needs spec=BackboneSpec"):
        register_backbone("probe_tiny")


def test_a_plugin_that_cannot_be_imported_is_named():
    with pytest.raises(ValueError, match=r"plugin module 'no_such_plugin_xyz' cannot be imported"):
        import_plugin("no_such_plugin_xyz")


def test_a_plugin_whose_dependency_is_missing_names_both(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin_xyz.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"plugin module 'broken_plugin_xyz' cannot be imported: "
                                         r".*no_such_dependency_xyz"):
        import_plugin("broken_plugin_xyz")


def test_a_plugin_with_a_bad_spec_fails_at_import_naming_the_backbone(tmp_path, monkeypatch):
    (tmp_path / "bad_spec_plugin_xyz.py").write_text(
        "from meltr_ray.backbones import BackboneSpec, TaskSpec, register_backbone\n"
        "register_backbone('badspec_tiny', spec=BackboneSpec(family='bad', tasks={'t': TaskSpec(losses=())},\n"
        "                  build=lambda task='t', pretrained=None: None))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"backbone 'badspec_tiny', task 't': losses is empty"):
        import_plugin("bad_spec_plugin_xyz")
    assert "badspec_tiny" not in list_backbones()


def test_tiny_variants_holds_tiny_names_and_test_sized_specs(registered):
    registered.extend(["probe_small", "probe_large"])
    register_backbone("probe_small", spec=spec(test_sized=True))
    register_backbone("probe_large", spec=spec())
    variants = tiny_variants()
    assert {"violet_tiny", "featlm_tiny", "probe_small"} <= set(variants)
    assert "probe_large" not in variants and "violet_base" not in variants


# ---- a config checked against the spec when it is resolved ----------------------------------------------------
def config(name: str, task: str | None = None, **data) -> JobConfig:
    task = task or get_spec(name).default_task
    return JobConfig().with_overrides({"backbone.name": name, "backbone.task": task,
                                       **{f"data.{k}": v for k, v in data.items()}})


@pytest.mark.parametrize("name", ["violet_tiny", "featlm_tiny"])
def test_unknown_task_names_backbone_task_and_field(name):
    with pytest.raises(ValueError, match=rf"backbone '{name}' has no task 'captioning' \(backbone.task\)"):
        resolve_job(config(name, "captioning"))


def test_unknown_backbone_names_the_field():
    with pytest.raises(ValueError, match=r"unknown backbone 'nosuchnet_tiny' \(backbone.name\)"):
        resolve_job(config("violet_tiny").with_overrides({"backbone.name": "nosuchnet_tiny"}))


@pytest.mark.parametrize("name", ["violet_tiny", "featlm_tiny"])
def test_num_frames_above_the_models_maximum_is_refused_at_resolve(name):
    task = get_spec(name).default_task
    limit = get_spec(name).tasks[task].data.max_frames
    assert resolve_job(config(name, num_frames=limit)).data.num_frames == limit
    with pytest.raises(ValueError, match=rf"backbone '{name}', task '{task}': data.num_frames = {limit + 1} is "
                                         rf"above the model's maximum {limit}"):
        resolve_job(config(name, num_frames=limit + 1))


@pytest.mark.parametrize("name", ["violet_tiny", "featlm_tiny"])
def test_text_longer_than_the_position_table_is_refused_at_resolve(name):
    limit = get_spec(name).tasks["retrieval"].data.text_positions
    with pytest.raises(ValueError, match=rf"task 'retrieval': data.max_text_len = {limit + 1} is above"):
        resolve_job(config(name, "retrieval", max_text_len=limit + 1))


def test_image_size_is_checked_for_pixels_and_not_read_for_features():
    limit = get_spec("violet_tiny").tasks["retrieval"].data.max_image_size
    with pytest.raises(ValueError, match=rf"data.image_size = {limit + 32} is above the model's maximum {limit}"):
        resolve_job(config("violet_tiny", image_size=limit + 32))
    assert resolve_job(config("featlm_tiny", image_size=4096)).data.image_size == 4096


def test_resolve_fills_the_data_fields_from_the_spec():
    data = get_spec("featlm_tiny").tasks["classify"].data
    cfg = resolve_job(config("featlm_tiny", "classify"))
    assert (cfg.data.num_frames, cfg.data.max_text_len) == (data.num_frames, data.text_len)
    assert resolve_job(config("featlm_tiny", "classify", num_frames=2)).data.num_frames == 2
