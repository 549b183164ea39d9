"""The `data` section's allowed values and the label count it implies.

This module owns the lists of datasets, dummy kinds and sampling modes; the
train-set builder and the validator import them from here. It must stay
importable without TensorFlow (validation runs before any data is touched):
it imports only the CIFAR-10 constants, never the tf.data pipeline.
"""

from __future__ import annotations

from mem_diffusion.config_checks import (MAX_SEED, SEED_WHY, check_section, int_in, one_of,
                                         real_in, require)
from mem_diffusion.data import cifar
from mem_diffusion.data.generators import HYBRID_MASKS

DATASETS = ("cifar_cars", "mondrian", "cifar_classes", "mondrian_classes")
MONDRIAN_DATASETS = ("mondrian", "mondrian_classes")  # generated: no CIFAR-10 needed
DUMMY_KINDS = ("", "gm", "hybrid", "cars", "geometric")
SAMPLING = ("uniform", "balanced")
# Their images come from the CIFAR car pool with 'cifar_cars'; Mondrian hybrids
# take a pool of held-out Mondrians instead (mondrian.pool_images).
CAR_BASED_DUMMIES = ("hybrid", "cars")

MAX_IMAGES = 1_000_000
MONDRIAN_CLASSES = 2  # 'mondrian_classes': the Mondrian and the earth-palette population
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512
# The train set lives in host memory as uint8; past this the build swaps or is
# killed after minutes of image generation.
MAX_TRAIN_SET_BYTES = 64 * 2**30

LIMITS = (
    one_of("data.dataset", DATASETS, "the train sets this package builds"),
    one_of("data.dummy_kind", DUMMY_KINDS, "'' = no dummy images"),
    one_of("data.sampling", SAMPLING, "how batches mix original and dummy rows"),
    int_in("data.num_original", 1, MAX_IMAGES, "the train set is held in host memory"),
    int_in("data.num_dummy", 0, MAX_IMAGES, "the train set is held in host memory"),
    int_in("data.image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE,
           "each UNet level halves it; absurd sizes aborted XLA (SIGABRT)"),
    int_in("data.seed", 0, MAX_SEED, SEED_WHY),
    real_in("data.hybrid_cutoff", 0.0, 1.0, "fraction of the radial spectrum kept from the "
            "car; 1 keeps the whole car", open_lo=True),
    one_of("data.hybrid_mask", HYBRID_MASKS, "how hybrid_cutoff is read (docs/data.md, "
           "'Hybrid')"),
    real_in("data.original_share", 0.0, 1.0, "'balanced' takes both kinds in every batch",
            open_lo=True, open_hi=True),
    int_in("data.classes", 0, cifar.NUM_CLASSES - 1, "CIFAR-10 class ids", each=True),
    int_in("data.class_counts", 1, MAX_IMAGES, "the train set is held in host memory",
           each=True),
)


def num_classes(data_cfg) -> int:
  """Labels the train set uses (1 = single class: train unconditionally).

  Extra cars are still cars: 'cars' dummies add no label.
  """
  if data_cfg.dataset == "cifar_classes":
    base = len(tuple(data_cfg.classes))
  elif data_cfg.dataset == "mondrian_classes":
    base = MONDRIAN_CLASSES
  else:
    base = 1
  return base + (1 if data_cfg.dummy_kind not in ("", "cars") else 0)


def num_images(data_cfg) -> int:
  """Rows of the train set (original + dummy)."""
  c = data_cfg
  per_class = c.dataset in ("cifar_classes", "mondrian_classes")
  original = sum(c.class_counts) if per_class else c.num_original
  return int(original) + int(c.num_dummy)


def validate_data_config(data_cfg) -> None:
  """Raises ConfigError naming the first bad `data.*` key; loads nothing."""
  c = data_cfg
  check_section(LIMITS, c)
  uses_cifar = c.dataset not in MONDRIAN_DATASETS
  require(not (uses_cifar and cifar.CIFAR_SIZE % c.image_size),
          f"data.image_size={c.image_size} must divide 32 with CIFAR images")
  require(not (c.dummy_kind and c.num_dummy == 0),
          f"data.dummy_kind={c.dummy_kind!r} needs data.num_dummy > 0")
  require(not (not c.dummy_kind and c.num_dummy),
          f"data.num_dummy={c.num_dummy} needs a data.dummy_kind")
  require(not (c.sampling == "balanced" and not c.num_dummy),
          "data.sampling='balanced' needs dummies (data.num_dummy > 0)")
  require(not (c.dummy_kind == "cars" and c.dataset != "cifar_cars"),
          f"data.dummy_kind='cars' takes its cars from the pool of "
          f"data.dataset='cifar_cars', not {c.dataset!r}")
  require(not (c.dummy_kind == "hybrid" and c.dataset == "cifar_classes"),
          "data.dummy_kind='hybrid' takes its low frequencies from the car pool of "
          "data.dataset='cifar_cars' or from held-out Mondrians ('mondrian', "
          "'mondrian_classes'), not from 'cifar_classes'")
  if c.dataset == "mondrian_classes":
    counts = tuple(c.class_counts)
    require(len(counts) == MONDRIAN_CLASSES,
            f"data.class_counts={counts}: 'mondrian_classes' needs {MONDRIAN_CLASSES} "
            "counts (class 0 = Mondrian, class 1 = the earth palette)")
  if c.dataset == "cifar_classes":
    classes, counts = tuple(c.classes), tuple(c.class_counts)
    require(len(classes) == len(counts) and bool(classes),
            f"data.classes {classes} and data.class_counts {counts} must be non-empty "
            "and of the same length")
    require(len(set(classes)) == len(classes),
            f"data.classes={classes}: distinct CIFAR-10 ids in 0..9")
    require(max(counts) <= cifar.PER_CLASS,
            f"data.class_counts={counts}: at most {cifar.PER_CLASS} per class "
            "(CIFAR-10 has 6000 images per class)")
  elif c.dataset == "cifar_cars":
    require(c.num_original <= cifar.PER_CLASS,
            f"data.num_original={c.num_original} must be in 1..{cifar.PER_CLASS} "
            "(CIFAR-10 has 6000 cars)")
  if c.dummy_kind in CAR_BASED_DUMMIES and c.dataset == "cifar_cars":
    pool = cifar.PER_CLASS - c.num_original
    require(c.num_dummy <= pool,
            f"data.num_dummy={c.num_dummy} {c.dummy_kind} dummies need that many pool cars, "
            f"but the pool holds {pool} (6000 cars - data.num_original={c.num_original})")
  size = num_images(c) * c.image_size**2 * 3
  require(size <= MAX_TRAIN_SET_BYTES,
          f"data.num_original + data.num_dummy: {num_images(c)} images of "
          f"{c.image_size}x{c.image_size} take {size / 2**30:.0f} GiB of host memory "
          f"(limit {MAX_TRAIN_SET_BYTES // 2**30} GiB)")
