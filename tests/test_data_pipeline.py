"""The tf.data mixing pipeline: resume, process slices, sampling modes, flips,
and config validation. Uses a synthetic TrainSet, so no generator compiles."""

import numpy as np
import pytest

from configs import default
from mem_diffusion import data
from mem_diffusion.data import pipeline

N_ORIG, N_DUMMY, B = 30, 70, 16


@pytest.fixture(scope="module")
def train_set():
  rng = np.random.default_rng(0)
  n = N_ORIG + N_DUMMY
  return data.TrainSet(
      images=rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
      labels=np.array([0] * N_ORIG + [1] * N_DUMMY, np.int32),
      sources=np.array(["mondrian"] * N_ORIG + ["gm"] * N_DUMMY),
      indices=np.concatenate([np.arange(N_ORIG), np.arange(N_DUMMY)]),
      num_classes=2, num_original=N_ORIG, car_indices=np.full(n, -1), split={})


def _cfg(**kw):
  c = default.get_config().data
  c.dataset, c.dummy_kind, c.num_original, c.num_dummy = "mondrian", "gm", N_ORIG, N_DUMMY
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _batches(ts, cfg, start, num, **kw):
  return list(data.make_dataset(ts, cfg, global_batch_size=kw.pop("b", B), seed=kw.pop("seed", 7),
                                start_step=start, num_steps=num, **kw))


def _rows_of(ts, batch):
  """Which train rows a batch holds (images are distinct random arrays)."""
  flat = ts.images.reshape(len(ts.images), -1).astype(np.float32) / 127.5 - 1
  x = batch["image"].reshape(len(batch["image"]), -1)
  return np.argmin(((x[:, None] - flat[None]) ** 2).sum(-1), axis=1)


@pytest.mark.parametrize("sampling,hflip", [("uniform", False), ("balanced", True)])
def test_resume_equals_uninterrupted(train_set, sampling, hflip):
  cfg = _cfg(sampling=sampling, hflip=hflip)
  full = _batches(train_set, cfg, 0, 14)
  resumed = _batches(train_set, cfg, 9, 5)
  assert len(full) == 14 and len(resumed) == 5
  for a, b in zip(full[9:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert full[0]["image"].dtype == np.float32 and full[0]["label"].dtype == np.int32
  assert full[0]["image"].shape == (B, 4, 4, 3)
  assert -1.0 <= min(b["image"].min() for b in full) and max(b["image"].max() for b in full) <= 1.0
  # A different seed gives a different order.
  other = _batches(train_set, cfg, 0, 2, seed=8)
  assert not np.array_equal(other[0]["image"], full[0]["image"])


@pytest.mark.parametrize("sampling", ["uniform", "balanced"])
def test_process_slices_partition_global_batch(train_set, sampling):
  cfg = _cfg(sampling=sampling, hflip=True)
  whole = _batches(train_set, cfg, 3, 4)
  parts = [_batches(train_set, cfg, 3, 4, process_index=i, process_count=4) for i in range(4)]
  for s in range(4):
    assert parts[0][s]["image"].shape[0] == B // 4
    np.testing.assert_array_equal(np.concatenate([p[s]["image"] for p in parts]),
                                  whole[s]["image"])
    np.testing.assert_array_equal(np.concatenate([p[s]["label"] for p in parts]),
                                  whole[s]["label"])


def test_uniform_epochs_visit_every_row_once(train_set):
  planner = pipeline.BatchPlanner(100, N_ORIG, _cfg(), global_batch_size=20, seed=1)
  rows = np.concatenate([planner.rows(s) for s in range(15)])  # 3 epochs of 100
  for e in range(3):
    np.testing.assert_array_equal(np.sort(rows[100 * e:100 * (e + 1)]), np.arange(100))
  assert not np.array_equal(rows[:100], rows[100:200])  # reshuffled each epoch
  # With B not dividing N an epoch boundary falls inside a batch.
  odd = pipeline.BatchPlanner(100, N_ORIG, _cfg(), global_batch_size=B, seed=1)
  rows = np.concatenate([odd.rows(s) for s in range(25)])[:400]
  assert all(len(set(rows[100 * e:100 * (e + 1)])) == 100 for e in range(4))


def test_balanced_share_and_streams(train_set):
  cfg = _cfg(sampling="balanced", original_share=0.25)
  planner = pipeline.BatchPlanner(100, N_ORIG, cfg, global_batch_size=B, seed=1)
  steps = [planner.rows(s) for s in range(30)]
  assert all((r < N_ORIG).sum() == 4 for r in steps)  # round(0.25 * 16)
  orig = np.concatenate([r[r < N_ORIG] for r in steps[:15]])  # 60 = two epochs
  np.testing.assert_array_equal(np.bincount(orig, minlength=N_ORIG), np.full(N_ORIG, 2))
  assert len(set(orig[:28])) == 28  # 7 steps inside the first epoch
  # Original rows are spread over the batch, not stacked at its start.
  assert len({tuple(np.flatnonzero(r < N_ORIG)) for r in steps}) > 1
  batches = _batches(train_set, cfg, 0, 3)
  assert [(b["label"] == 0).sum() for b in batches] == [4, 4, 4]


def test_labels_follow_rows_and_flips_are_mirrors(train_set):
  cfg = _cfg(hflip=True)
  batches = _batches(train_set, cfg, 0, 6)
  plain = _batches(train_set, _cfg(hflip=False), 0, 6)
  flipped = 0
  for b, p in zip(batches, plain):
    rows = _rows_of(train_set, p)
    np.testing.assert_array_equal(b["label"], train_set.labels[rows])
    np.testing.assert_array_equal(
        p["image"], train_set.images[rows].astype(np.float32) / np.float32(127.5) - 1)
    same = np.all(b["image"] == p["image"], axis=(1, 2, 3))
    mirrored = np.all(b["image"] == p["image"][:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    flipped += int((~same).sum())
  assert 0.3 < flipped / (6 * B) < 0.7


def test_pipeline_argument_errors(train_set):
  with pytest.raises(ValueError, match="not divisible"):
    _batches(train_set, _cfg(), 0, 1, b=18, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    _batches(train_set, _cfg(), 0, 1, process_index=4, process_count=4)
  with pytest.raises(ValueError, match="start_step"):
    _batches(train_set, _cfg(), -1, 1)
  with pytest.raises(ValueError, match="original_share"):
    _batches(train_set, _cfg(sampling="balanced", original_share=0.01), 0, 1)
  with pytest.raises(ValueError, match="data.sampling"):
    _batches(train_set, _cfg(sampling="stratified"), 0, 1)


@pytest.mark.parametrize("overrides,key", [
    (dict(dataset="imagenet"), "data.dataset"),
    (dict(dummy_kind="noise"), "data.dummy_kind"),
    (dict(num_original=0), "data.num_original"),
    (dict(num_dummy=-1), "data.num_dummy"),
    (dict(dummy_kind="", num_dummy=5), "data.num_dummy"),
    (dict(num_dummy=0), "data.num_dummy"),
    (dict(image_size=0), "data.image_size"),
    (dict(hybrid_cutoff=1.5), "data.hybrid_cutoff"),
    (dict(sampling="balanced", original_share=1.0), "data.original_share"),
    (dict(dummy_kind="cars"), "data.dummy_kind"),  # cars need dataset cifar_cars
    (dict(dataset="cifar_cars", image_size=12), "data.image_size"),
    (dict(dataset="cifar_cars", num_original=6001), "data.num_original"),
    (dict(dataset="cifar_cars", dummy_kind="hybrid", num_original=2000, num_dummy=4001),
     "pool holds 4000"),
    (dict(dataset="cifar_cars", dummy_kind="cars", num_original=3000, num_dummy=3500),
     "pool holds 3000"),
    (dict(dataset="cifar_classes", classes=(1, 3), class_counts=(10,)), "data.class_counts"),
    (dict(dataset="cifar_classes", classes=(1, 1), class_counts=(10, 10)), "data.classes"),
    (dict(dataset="cifar_classes", classes=(1, 12), class_counts=(10, 10)), "data.classes"),
    (dict(dataset="cifar_classes", classes=(1,), class_counts=(0,)), "data.class_counts"),
    (dict(dataset="cifar_classes", classes=(1,), class_counts=(6001,)), "data.class_counts"),
    (dict(dataset="cifar_classes", classes=(1,), class_counts=(9,), dummy_kind="hybrid"),
     "data.dummy_kind='hybrid'"),
    (dict(dataset="mondrian_classes", class_counts=(4, 5, 6)), "data.class_counts"),
    (dict(dataset="mondrian_classes", class_counts=(4,)), "data.class_counts"),
    (dict(dataset="mondrian_classes", dummy_kind="cars"), "data.dummy_kind='cars'"),
])
def test_config_validation_names_the_key(overrides, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    data.validate_data_config(_cfg(**overrides))


def test_valid_configs_and_num_classes():
  for cfg, k in [(_cfg(), 2), (_cfg(dummy_kind="", num_dummy=0), 1),
                 (_cfg(dataset="cifar_cars", dummy_kind="cars", num_dummy=4000,
                       num_original=2000), 1),
                 (_cfg(dataset="cifar_cars", dummy_kind="hybrid", num_dummy=4000,
                       num_original=2000), 2),
                 (_cfg(dataset="cifar_classes", dummy_kind="", num_dummy=0,
                       classes=(3, 5, 1), class_counts=(5, 50, 500)), 3),
                 (_cfg(dataset="cifar_classes", classes=(3, 5), class_counts=(5, 50)), 3),
                 (_cfg(dummy_kind="hybrid", image_size=12), 2),  # Mondrian: any size
                 (_cfg(dataset="mondrian_classes", class_counts=(16, 240), dummy_kind="",
                       num_dummy=0), 2),
                 (_cfg(dataset="mondrian_classes", class_counts=(5000, 9000)), 3)]:
    data.validate_data_config(cfg)
    assert data.num_classes(cfg) == k
  tiny = default.get_config("tiny").data
  data.validate_data_config(tiny)
  assert tiny.image_size == 16 and tiny.num_original == 200
  cars4k = _cfg(dataset="cifar_cars", dummy_kind="cars", num_dummy=4000, num_original=2000)
  assert data.heldout_available(cars4k) == 0
