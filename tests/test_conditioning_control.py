"""The conditioning control, the dummy label's own samples, the originals-only
ratio and draws per image (issue 25): configs, labels and report fields, no
training."""

import numpy as np
import pytest

from mem_diffusion import config as config_lib
from mem_diffusion import data
from mem_diffusion.experiments import rows
from mem_diffusion.run import evaluate
from mem_diffusion.run import sampling


def _load(spec):
  config = config_lib.load_config(spec)
  config_lib.validate_config(config)
  return config


def test_cond_one_is_the_dummy_runs_model_with_one_label():
  config = _load("configs/toy_capacity.py:n=24,cond=one")
  assert config.name == "toy_capacity_24_cond" and config.model.num_classes == 2
  train = data.build_train_set(config.data)
  assert set(train.labels.tolist()) == {0} and config.sampling.label == 0
  assert rows.conditioning(config) == "one label"
  assert rows.conditioning(_load("configs/toy_capacity.py:n=24")) == "unconditional"


def test_cond_random_labels_carry_no_information_and_are_rebuilt_exactly():
  config = _load("configs/toy_capacity.py:n=48,cond=random")
  assert config.name == "toy_capacity_48_rand2" and config.sampling.label == -1
  labels = data.build_train_set(config.data).labels
  assert set(labels.tolist()) == {0, 1} and 12 <= labels.sum() <= 36
  np.testing.assert_array_equal(labels, data.build_train_set(config.data).labels)
  config.data.seed = 1
  assert not np.array_equal(labels, data.build_train_set(config.data).labels)
  assert rows.conditioning(config) == "random labels"


@pytest.mark.parametrize("change,message", [
    ({"data.random_labels": 1}, "data.random_labels=1"),
    ({"data.random_labels": 2, "data.dummy_kind": "gm", "data.num_dummy": 4},
     "without dummies"),
    ({"sampling.dummy_label_samples": 8}, "needs a class-conditional model with a labelled"),
    ({"sampling.dummy_label_samples": 127}, "sampling.dummy_label_samples=127"),
])
def test_bad_settings_are_refused_before_any_compute(change, message):
  config = config_lib.load_config("configs/toy_capacity.py:n=24,cond=one")
  for key, value in change.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(config)


def test_bad_tokens_name_the_file():
  for spec, message in (("configs/toy_capacity.py:cond=maybe", "cond='maybe'"),
                        ("configs/toy_dummies.py:kind=gm,mask=corner_radius", "only with kind=hybrid"),
                        ("configs/toy_dummies.py:loss_scale=x", "not a number"),
                        ("configs/toy_dummies.py:loss_scale=0", "loss_scale must be")):
    with pytest.raises(ValueError, match=message):
      config_lib.load_config(spec)


def test_dummy_runs_sample_the_dummy_label_last():
  config = _load("configs/toy_dummies.py:kind=hybrid,m=48,n=24,mask=corner_radius")
  assert config.name == "toy_hybrid_48_uniform_n24_corner"
  assert config.data.hybrid_mask == "corner_radius"
  assert (config.sampling.num_samples, config.sampling.dummy_label_samples) == (192, 64)
  labels = np.concatenate([sampling.sample_labels(config, s, 64) for s in (0, 64, 128)])
  np.testing.assert_array_equal(labels, np.repeat([0, 1], [128, 64]))


def test_balanced_arm_keeps_the_real_rows_and_their_weight():
  config = _load("configs/toy_dummies.py:kind=gm,m=640,n=48,sampling=balanced,batch=32,"
                 "loss_scale=2")
  assert config.name == "toy_gm_640_balanced_n48_b32_ls2"
  assert config.training.loss_scale == 2.0
  # 16 of 32 rows are Mondrians: the no-dummy run's draws at batch 16 ...
  assert rows.draws_per_original(config) == 2000 * 16 / 48
  # ... and each has weight loss_scale / batch = 1/16, as at batch 16.
  assert config.training.loss_scale / config.training.batch_size == 1 / 16
  uniform = _load("configs/toy_dummies.py:kind=gm,m=48,n=24")
  assert rows.draws_per_original(uniform) == pytest.approx(2000 * 16 / 72)


def test_originals_only_ratio_and_the_dummy_label_block(tmp_path):
  """A dummy next to an original turns a copy into a non-replicate against
  the whole train set (d2 is the dummy); against the originals alone it is
  a replicate again."""
  from configs import default  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  originals = rng.integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)
  near = np.clip(originals[:1].astype(int) + 3, 0, 255).astype(np.uint8)  # a dummy by original 0
  train = np.concatenate([originals, near])
  samples = np.repeat(np.clip(originals[:1].astype(int) + 1, 0, 255).astype(np.uint8), 8, 0)
  cfg = default.get_config().eval
  report = evaluate.evaluate_arrays(samples, train, None, eval_cfg=cfg, out_dir=str(tmp_path),
                                    num_original=6)
  assert report["replicate_ratio"] == 0.0 and report["replicate_ratio_originals"] == 1.0
  lo, hi = report["replicate_ci95_originals"]
  assert lo < 1.0 <= hi

  class TrainSet:  # what _dummy_label_block reads of a data.TrainSet
    images = train
    sources = np.array(["mondrian"] * 6 + ["gm"])
  # pylint: disable-next=protected-access
  block = evaluate._dummy_label_block(np.repeat(originals[3:4], 4, 0), 1, TrainSet, cfg)
  assert block["label"] == 1 and block["num_samples"] == 4
  assert block["replicate_ratio"] == 1.0
  assert block["replicated_train_source_counts"] == {"mondrian": 4}


def test_row_carries_the_new_columns():
  config = _load("configs/toy_dummies.py:kind=gm,m=48,n=24")
  report = {"replicate_ratio": 0.5, "replicate_ci95": [0.4, 0.6],
            "replicate_ratio_originals": 0.6, "replicate_ci95_originals": [0.5, 0.7],
            "per_class": {"0": {"replicate_ratio": 0.5, "replicate_ci95": [0.4, 0.6]}},
            "dummy_label": {"label": 1, "replicate_ratio": 0.1, "replicate_ci95": [0.0, 0.2]}}
  row = rows.row("spec", config, 0, "/w", report)
  assert set(row) == set(rows.COLUMNS)
  assert row["replicate_ratio_originals"] == 0.6 and row["replicate_originals_ci_high"] == 0.7
  assert row["draws_per_original"] == pytest.approx(444.4)
  assert row["conditioning"] == "class labels" and row["loss_scale"] == 1.0
  assert row["per_class"]["1 (dummy label)"] == {"ratio": 0.1, "ci95": [0.0, 0.2]}
  # Without dummies the originals are the whole train set.
  plain = rows.row("spec", _load("configs/toy_capacity.py:24"), 0, "/w", report | {
      "replicate_ratio_originals": None})
  assert plain["replicate_ratio_originals"] is None
  plain = rows.row("spec", _load("configs/toy_capacity.py:24"), 0, "/w",
                    {"replicate_ratio": 0.5, "replicate_ci95": [0.4, 0.6]})
  assert plain["replicate_ratio_originals"] == 0.5 and plain["replicate_originals_ci_low"] == 0.4
