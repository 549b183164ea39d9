"""The train set of one experiment: original images + a fixed dummy set.

Row order is fixed: the original-class images first (rows [0, num_original)),
then the dummies. The pipeline permutes rows; this module only decides which
images exist and what they are labelled.

Labels. Runs with a non-car dummy kind (gm, hybrid, geometric) are
class-conditional: label 0 is the original class, the dummy kind gets label 1.
'cifar_classes' labels class data.classes[i] as i (dummies, if any, get
len(classes)); 'mondrian_classes' labels the Mondrian 0 and the earth-palette
population 1 (dummies, if any, 2). Cars-only runs ('cifar_cars' without
dummies or with more cars) and Mondrian without dummies are single-class:
every label is 0 and `num_classes` is 1, i.e. the model should be
unconditional, unless `data.random_labels = k` labels each of their images
with a random class in [0, k) (the conditioning control of docs/results.md).

Hybrids take their low frequencies from a pool outside the train set: pool
cars with 'cifar_cars' (their CIFAR index is recorded in `car_indices`),
pool Mondrians (mondrian.pool_images: hybrid i uses pool Mondrian i) with the
Mondrian datasets, where `car_indices` stays -1 since no car is involved.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from mem_diffusion.config import validate_data_config
from mem_diffusion.data import cifar, generators, geometric, mondrian

# The train sets and dummy kinds built here; mem_diffusion.config checks a
# config against these lists.
DATASETS = ("cifar_cars", "mondrian", "cifar_classes", "mondrian_classes")
MONDRIAN_DATASETS = ("mondrian", "mondrian_classes")  # generated: no CIFAR-10 needed
DUMMY_KINDS = ("", "gm", "hybrid", "cars", "geometric")
# Their images come from the CIFAR car pool with 'cifar_cars'; Mondrian hybrids
# take a pool of held-out Mondrians instead (mondrian.pool_images).
CAR_BASED_DUMMIES = ("hybrid", "cars")
SAMPLING = ("uniform", "balanced")  # how batches mix original and dummy rows
MONDRIAN_CLASSES = 2  # 'mondrian_classes': the Mondrian and the earth-palette population


def num_classes(data_cfg) -> int:
  """Labels the train set uses (1 = single class: train unconditionally).

  Extra cars are still cars: 'cars' dummies add no label.
  """
  base = {"cifar_classes": len(tuple(data_cfg.classes)),
          "mondrian_classes": MONDRIAN_CLASSES}.get(data_cfg.dataset, 1)
  base = max(base, int(data_cfg.get("random_labels", 0)))
  return base + (1 if data_cfg.dummy_kind not in ("", "cars") else 0)


def num_images(data_cfg) -> int:
  """Rows of the train set (original + dummy)."""
  per_class = data_cfg.dataset in ("cifar_classes", "mondrian_classes")
  original = sum(data_cfg.class_counts) if per_class else data_cfg.num_original
  return int(original) + int(data_cfg.num_dummy)


@dataclasses.dataclass(frozen=True)
class TrainSet:
  images: np.ndarray  # uint8 (N, H, W, 3)
  labels: np.ndarray  # int32 (N,)
  sources: np.ndarray  # str (N,): 'cifar10', 'cifar10_pool', 'mondrian', 'gm', ...
  indices: np.ndarray  # int64 (N,): CIFAR-10 index or generator index
  num_classes: int  # 1 = single class (unconditional model)
  num_original: int  # rows [0, num_original) are original-class images
  car_indices: np.ndarray  # int64 (N,): car hybrid -> CIFAR index of its car, else -1
  split: dict  # recorded CIFAR split {class: {'train': [...], 'pool': [...]}}

  def __len__(self) -> int:
    return len(self.images)

  @property
  def num_dummy(self) -> int:
    return len(self) - self.num_original

  def manifest(self, data_cfg=None) -> dict[str, Any]:
    """JSON-ready audit record: every image's source, index and label."""
    rows = []
    for s, i, y, c in zip(self.sources, self.indices, self.labels, self.car_indices):
      row = {"source": str(s), "index": int(i), "label": int(y)}
      if c >= 0:
        row["car_index"] = int(c)
      rows.append(row)
    out = {
        "num_images": len(self),
        "num_original": self.num_original,
        "num_classes": self.num_classes,
        "image_shape": list(self.images.shape[1:]),
        "cifar_index": "i for tfds id train_i, 50000 + i for test_i",
        "cifar_split": self.split,
        "images": rows,
    }
    if data_cfg is not None:
      out["data_config"] = _cfg_dict(data_cfg)
    return out


def write_manifest(train_set: TrainSet, path: str, data_cfg=None) -> None:
  """Deterministic JSON: one top-level key per line, one image per line."""
  m = train_set.manifest(data_cfg)
  rows = m.pop("images")
  lines = [f" {json.dumps(k)}: {json.dumps(v, sort_keys=True)}," for k, v in sorted(m.items())]
  lines.append(' "images": [')
  lines.append(",\n".join("  " + json.dumps(r, sort_keys=True) for r in rows))
  lines.append(" ]")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write("{\n" + "\n".join(lines) + "\n}\n")


def _cfg_dict(data_cfg) -> dict:
  d = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(d.items())}


def _check_count(available: int, needed: int, what: str) -> None:
  if available < needed:
    raise ValueError(f"{what}: needed {needed} images but the data has only "
                     f"{available} (is this mock data?)")


def _cifar_part(data_cfg):
  """Original rows and the pool of each class, as a dict of arrays."""
  c = data_cfg
  if c.dataset == "cifar_cars":
    classes, counts = (cifar.AUTOMOBILE,), (c.num_original,)
  else:
    classes, counts = tuple(int(k) for k in c.classes), tuple(c.class_counts)
  loaded = cifar.load_classes(classes, c.tfds_data_dir, download=c.get("download", True))
  parts, split = [], {}
  for label, (k, n) in enumerate(zip(classes, counts)):
    imgs, idx = loaded[k]
    _check_count(len(imgs), n, f"CIFAR-10 class {k}")
    order = cifar.class_order(c.seed, k, len(imgs))
    train, pool = order[:n], order[n:]
    parts.append((imgs[train], idx[train], label))
    split[str(k)] = {"train": idx[train].tolist(), "pool": idx[pool].tolist()}
    if label == 0:
      pool_images, pool_index = imgs[pool], idx[pool]
  return parts, split, pool_images, pool_index


def _random_labels(seed: int, n: int, k: int) -> np.ndarray:
  """Labels that carry no information about the image: uniform over k classes,
  a pure function of (data.seed, n, k), so evaluation rebuilds them exactly."""
  rng = np.random.default_rng([seed, n, k, 0x1AB])
  return rng.integers(0, k, size=n, dtype=np.int32)


def build_train_set(data_cfg, *, gen_batch_size: int = generators.DEFAULT_GEN_BATCH
                    ) -> TrainSet:
  validate_data_config(data_cfg)
  c = data_cfg
  size = c.image_size
  images, labels, sources, indices = [], [], [], []
  split, pool_images, pool_index = {}, None, None

  if c.dataset in MONDRIAN_DATASETS:
    counts = tuple(c.class_counts) if c.dataset == "mondrian_classes" else (c.num_original,)
    render = (mondrian.mondrian_images, mondrian.earth_images)
    for label, (n, fn) in enumerate(zip(counts, render)):
      images.append(fn(c.seed, np.arange(n), size, batch_size=gen_batch_size))
      labels.append(np.full(n, label, np.int32))
      sources.append(np.full(n, "mondrian" if label == 0 else "mondrian_earth"))
      indices.append(np.arange(n, dtype=np.int64))
  else:
    parts, split, pool_images, pool_index = _cifar_part(c)
    for imgs, idx, label in parts:
      images.append(cifar.downscale(imgs, size))
      labels.append(np.full(len(imgs), label, np.int32))
      sources.append(np.full(len(imgs), "cifar10"))
      indices.append(idx.astype(np.int64))
  num_original = sum(len(a) for a in images)
  if c.get("random_labels", 0):
    labels = [_random_labels(c.seed, num_original, c.random_labels)]
  car_indices = [np.full(num_original, -1, np.int64)]

  nd = c.num_dummy
  if nd:
    dummy_label = num_classes(c) - 1 if c.dummy_kind != "cars" else 0
    ids = np.arange(nd, dtype=np.int64)
    cars = None
    if c.dataset in MONDRIAN_DATASETS and c.dummy_kind == "hybrid":
      cars = mondrian.pool_images(c.seed, ids, size, batch_size=gen_batch_size)
    elif c.dummy_kind in CAR_BASED_DUMMIES:
      _check_count(len(pool_images), nd, "the car pool")
      cars = cifar.downscale(pool_images[:nd], size)
    if c.dummy_kind == "gm":
      dummies = generators.gm_images(c.seed, ids, size, batch_size=gen_batch_size)
    elif c.dummy_kind == "geometric":
      dummies = geometric.geometric_images(c.seed, ids, size, batch_size=gen_batch_size)
    elif c.dummy_kind == "hybrid":
      dummies = generators.hybrid_images(c.seed, ids, cars, c.hybrid_cutoff,
                                         mask=c.hybrid_mask, batch_size=gen_batch_size)
    else:  # cars
      dummies = cars
    images.append(dummies)
    labels.append(np.full(nd, dummy_label, np.int32))
    if c.dummy_kind == "cars":
      sources.append(np.full(nd, "cifar10_pool"))
      indices.append(pool_index[:nd].astype(np.int64))
    else:
      sources.append(np.full(nd, c.dummy_kind))
      indices.append(ids)
    car_indices.append(pool_index[:nd].astype(np.int64)
                       if c.dummy_kind == "hybrid" and pool_index is not None
                       else np.full(nd, -1, np.int64))

  return TrainSet(
      images=np.ascontiguousarray(np.concatenate(images)),
      labels=np.concatenate(labels).astype(np.int32),
      sources=np.concatenate(sources).astype(str),
      indices=np.concatenate(indices),
      num_classes=num_classes(c),
      num_original=num_original,
      car_indices=np.concatenate(car_indices),
      split=split,
  )


def heldout_available(data_cfg) -> int:
  """How many held-out original-class images `heldout_images` can return
  (computed from the config: CIFAR-10 has 6,000 images per class)."""
  validate_data_config(data_cfg)
  c = data_cfg
  if c.dataset in MONDRIAN_DATASETS:
    return mondrian.POOL_OFFSET  # the held-out stream below the hybrids' pool
  first = c.num_original if c.dataset == "cifar_cars" else tuple(c.class_counts)[0]
  used = c.num_dummy if c.dummy_kind == "cars" else 0
  return cifar.PER_CLASS - first - used


def heldout_images(data_cfg, n: int) -> np.ndarray:
  """Real original-class images outside the train set, uint8 NHWC.

  Mondrian (both datasets; class 0 for 'mondrian_classes'): fresh draws
  from a stream disjoint from the train stream, below the hybrids' pool
  (mondrian.POOL_OFFSET). CIFAR:
  pool images of the original class (data.classes[0] for 'cifar_classes')
  not used as dummies. For hybrids, the pool cars no hybrid uses come first;
  only when those run out do the hybrids' own cars follow (they are not in the
  train set, but their low frequencies are). More-cars dummies are never
  returned: with 2k + 4k cars no held-out car exists and this raises.
  """
  validate_data_config(data_cfg)
  if n < 0:
    raise ValueError(f"n={n} must be >= 0")
  c = data_cfg
  if c.dataset in MONDRIAN_DATASETS:
    if n > mondrian.POOL_OFFSET:
      raise ValueError(f"heldout_images: at most {mondrian.POOL_OFFSET} held-out Mondrians, "
                       f"asked for {n}")
    return mondrian.mondrian_images(c.seed, np.arange(n), c.image_size, heldout=True)
  _, _, pool_images, _ = _cifar_part(c)
  used = c.num_dummy if c.dummy_kind in CAR_BASED_DUMMIES else 0
  candidates = pool_images[used:]
  if c.dummy_kind == "hybrid":
    candidates = np.concatenate([candidates, pool_images[:used]])
  if len(candidates) < n:
    raise ValueError(
        f"heldout_images: asked for {n} held-out images of the original class, but "
        f"only {len(candidates)} exist outside the train set for this config "
        f"(data.num_original={c.num_original}, data.dummy_kind={c.dummy_kind!r}, "
        f"data.num_dummy={c.num_dummy}); see heldout_available()")
  return cifar.downscale(candidates[:n], c.image_size)
