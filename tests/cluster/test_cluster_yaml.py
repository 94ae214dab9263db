"""cluster.yaml passes Ray's own launcher validation (the offline part of `ray up`) and has the right shape."""
from __future__ import annotations

import copy
import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _text() -> str:
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        return f.read()


def _load() -> dict:
    return yaml.safe_load(_text())


def _validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config
    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    full = _validate(_load())
    head = full["available_node_types"][full["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"]["train_driver"] >= 1
    gpu = full["available_node_types"]["gpu_8xa100"]
    assert gpu["node_config"]["InstanceType"] == "p4d.24xlarge" and gpu["resources"]["GPU"] == 8
    assert any("pip install -e" in c for c in full["setup_commands"])
    assert "~/meltr_ray" in full["file_mounts"]
    start = " ".join(full["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_TRAIN_ENABLE_STATE_TRACKING=1" in start


def test_an_8_gpu_trial_fits_a_worker_node():
    from meltr_ray.cluster.driver import worker_resources
    from meltr_ray.cluster.preflight import check_resources, concurrent_trials
    from meltr_ray.config import JobConfig
    config = _load()
    nodes = [t["resources"] for name, t in config["available_node_types"].items() if name != "head"]
    nodes = nodes * config["available_node_types"]["gpu_8xa100"]["max_workers"]
    cfg = JobConfig()
    check_resources(cfg, worker_resources(cfg), nodes)
    assert concurrent_trials(cfg, worker_resources(cfg), nodes) == 4


def test_every_ray_process_requires_the_shipped_token():
    full = _validate(_load())
    for commands in (full["head_start_ray_commands"], full["worker_start_ray_commands"]):
        start = [c for c in commands if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)
    assert full["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in c for c in full["setup_commands"])   # drivers on the nodes


def test_the_commented_iam_profiles_validate_once_filled_in():
    """The IamInstanceProfile lines are comments until the user puts in their account; uncommented, Ray's own
    validator accepts them and both node types get their own profile (Ray's default gives workers none)."""
    filled = re.sub(r"^(\s*)# (IamInstanceProfile:|  Arn: )", r"\1\2", _text(), flags=re.MULTILINE)
    assert filled != _text()
    full = _validate(yaml.safe_load(filled))
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Arn"] for name, t in full["available_node_types"].items()}
    assert profiles.keys() == {"head", "gpu_8xa100"} and len(set(profiles.values())) == 2
    assert all(arn.startswith("arn:aws:iam::") and ":instance-profile/" in arn for arn in profiles.values())


@pytest.mark.parametrize("mutate, error", [
    (lambda c: c["available_node_types"]["gpu_8xa100"].__setitem__("min_wokers", 0), "Additional properties"),
    (lambda c: c.__setitem__("head_node_type", "nope"), "head_node_type"),
    (lambda c: c["available_node_types"]["gpu_8xa100"]["resources"].__setitem__("GPU", "8"), "is not of type"),
])
def test_the_validator_catches_broken_variants(mutate, error):
    config = _load()
    mutate(config)
    with pytest.raises(Exception, match=error):
        _validate(config)
