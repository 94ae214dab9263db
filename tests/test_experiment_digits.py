"""``meltr-ray experiment digits``: the product command runs end to end (behaviour, not numbers)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from meltr_ray.cli import main  # noqa: E402
from meltr_ray.experiments import digits  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert main(["experiment", "digits", "--quick", "--out", str(out)]) == 0
    return out, json.load(open(out / "digits.json"))


def test_quick_run_has_every_method_in_both_regimes_with_finite_accuracies(quick):
    out, saved = quick
    assert list(saved["table"]) == list(digits.REGIMES)
    for regime, rows in saved["table"].items():
        assert list(rows) == list(digits.METHOD_KEYS), regime
        assert all(math.isfinite(r["mean"]) and 0 <= r["mean"] <= 100 for r in rows.values())
    markdown = (out / "digits.md").read_text()
    assert all(m.label in markdown for m in digits.METHODS) and "target for `meltr`" in markdown
    assert (out / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_method_of_a_regime_takes_the_same_number_of_updates_and_meltr_meta_steps(quick):
    _, saved = quick
    for run in saved["runs"]:
        steps = digits.QUICK_STEPS[run["regime"]]
        expected = steps // 3 if run["method"] not in ("primary", "mtl", "fixed", "mtl_minus_meta") else 0
        assert run["meta_steps"] == expected, run["method"]
        if run["method"].startswith("meltr") and run["method"] != "meltr_official":
            assert run["weights"] and set(run["weights"][0][1]) == {"ce", "mixup", "rotation"}


def test_the_neumann_step_does_nothing_at_k_0(quick):
    _, saved = quick
    runs = {(r["regime"], r["method"]): r for r in saved["runs"]}
    for regime in digits.REGIMES:
        assert runs[regime, "meltr_k0"]["accuracy"] == runs[regime, "meltr_k0_large"]["accuracy"]
        assert runs[regime, "meltr_k0"]["weights"] == runs[regime, "meltr_k0_large"]["weights"]


def test_the_meta_split_is_taken_from_training_and_reported(quick):
    _, saved = quick
    for regime, rows in saved["table"].items():
        full = rows["mtl"]["train_images"]
        for key in ("meltr_split", "mtl_minus_meta"):
            assert rows[key]["train_images"] + rows[key]["meta_images"] == full
            assert rows[key]["meta_images"] == pytest.approx(digits.META_FRACTION * full, abs=1)


def test_fixed_split_and_batches_are_shared_by_every_method():
    train, test = digits.load_digits_split()
    assert (len(train), len(test)) == (1197, 600)
    assert np.allclose(np.bincount(test.labels) / 600, np.bincount(train.labels) / 1197, atol=0.01)
    first, again = digits.epoch_batches(train, 3, 1), digits.epoch_batches(train, 3, 1)
    assert len(first) == 1197 // digits.BATCH_SIZE
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    assert not torch.equal(first[0]["label"], digits.epoch_batches(train, 3, 2)[0]["label"])


def test_every_method_starts_from_the_same_weights():
    from meltr_ray import build_run
    states = [build_run(digits.base_config(4, 10).with_overrides(m.overrides)).model.state_dict()
              for m in digits.METHODS if m.key in ("primary", "mtl", "meltr", "meltr_split")]
    assert all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in states[0])


def test_digits_as_an_image_folder_ingest_to_the_same_images(tmp_path):
    from meltr_ray.data.image import decode_image
    from meltr_ray.data.ingest import ingest
    import pyarrow.parquet as pq
    root = digits.write_digits_image_folder(str(tmp_path / "digits"))
    report = ingest("image-folder", annotations=root, out=str(tmp_path / "shards"), progress=False)
    assert report.rows_written == 1797 and not report.skipped
    meta = json.load(open(tmp_path / "shards" / "dataset.json"))
    assert meta["rows"] == {"train": 1197, "test": 600} and meta["classes"] == [str(d) for d in range(10)]
    train, _ = digits.load_digits_split()
    table = pq.read_table(os.path.join(tmp_path / "shards", meta["splits"]["train"][0]))
    row = table.slice(0, 1).to_pylist()[0]
    n = int(row["id"].rsplit("/", 1)[1])
    assert np.array_equal(decode_image(row["video_bytes"]), train.images[n]) and row["label"] == train.labels[n]


def test_unknown_method_or_regime_is_an_error():
    with pytest.raises(ValueError, match="unknown digits method"):
        digits.run_experiment(methods=("meltr", "magic"))
    assert main(["experiment", "digits", "--regimes", "all", "--out", "/tmp/unused"]) == 2


@pytest.mark.slow
@pytest.mark.ray
def test_ray_tune_picks_gamma_and_beta_for_resnet_digits_on_digits_shards(ray_cluster, tmp_path):
    """The product's own path: digits → PNG folder → ingest → shards → meltr_ray.tune over γ and β."""
    import meltr_ray
    from meltr_ray.data.ingest import ingest
    root = digits.write_digits_image_folder(str(tmp_path / "digits"))
    shards = str(tmp_path / "shards")
    ingest("image-folder", annotations=root, out=shards, progress=False)
    results = meltr_ray.tune(recipe="resnet_digits", data=shards, space="resnet_classification", num_samples=3,
                             epochs=2, storage_path=str(tmp_path / "results"), progress=False,
                             overrides={"cluster.cpus_per_worker": 0.5, "data.decode_actors": 1})
    assert len(results) == 3 and not results.errors
    for result in results:
        assert 0.01 <= result.config["reg_weight"] <= 10.0 and 3e-5 <= result.config["meltr_lr"] <= 1e-2
        assert 1 <= result.metrics["epoch"] <= 2 and result.metrics["meta_steps"] > 0
    best = results.get_best_result()
    assert best.metrics["val_accuracy"] == max(r.metrics["val_accuracy"] for r in results)
    print({(r.config["reg_weight"], r.config["meltr_lr"]): r.metrics["val_accuracy"] for r in results})
    assert best.metrics["val_accuracy"] > 80.0          # 74 updates (in memory, the same recipe: 93.5 %)
