"""Allowed values of the `training`, `sampling` and `eval` sections.

These sections are read by train.py, sampling.py and evaluate.py; their
limits live here, in a module that imports nothing heavy, so that checking a
config never builds a model or loads data. Rules that compare these sections
with others (a respacing spec against diffusion.steps, a label against
model.num_classes) are in mem_diffusion.validate, which passes
model.num_classes to `validate_sampling_config` for label -1.
"""

from __future__ import annotations

from mem_diffusion.config_checks import (MAX_SEED, SEED_WHY, check_section, int_in, real_in,
                                         require)

MAX_BATCH = 65_536
MAX_SAMPLES = 1_000_000

TRAINING_LIMITS = (
    int_in("training.batch_size", 1, MAX_BATCH, "global batch over all devices; "
           "IDDPM uses 128"),
    int_in("training.num_steps", 1, 100_000_000, "0 trains nothing: use --mode=sample or "
           "--mode=eval on an existing run instead"),
    real_in("training.learning_rate", 0.0, 1.0, "Adam steps of this size diverge; "
            "IDDPM uses 1e-4", open_lo=True),
    real_in("training.weight_decay", 0.0, 1.0, "AdamW's decoupled decay; 0 = plain Adam"),
    real_in("training.ema_decay", 0.0, 1.0, "1 would freeze the EMA at its initial params",
            open_hi=True),
    int_in("training.micro_batches", 1, MAX_BATCH, "micro-batches per step; must divide "
           "the batch"),
    int_in("training.log_every", 1, None, "steps between log lines"),
    int_in("training.checkpoint_every", 1, None, "steps between checkpoints"),
    int_in("training.keep_checkpoints", 1, 1000, "checkpoints kept on disk"),
    int_in("training.sample_grid_every", 0, None, "0 = no periodic grid"),
    int_in("training.grid_num_samples", 1, 1024, "the grid is sampled in one batch"),
)

SAMPLING_LIMITS = (
    int_in("sampling.num_samples", 1, MAX_SAMPLES, "samples are held in host memory and "
           "compared with every train image"),
    int_in("sampling.batch_size", 1, MAX_BATCH, "images per jitted chunk"),
    real_in("sampling.eta", 0.0, 1.0, "DDIM noise scale: above 1 the direction term takes the "
            "square root of a negative number (NaN images)"),
    int_in("sampling.label", -1, 999, "a class id of a class-conditional model; -1 = every "
           "class in turn (sample i gets label i % model.num_classes)"),
    int_in("sampling.seed", 0, MAX_SEED, SEED_WHY),
)

EVAL_LIMITS = (
    real_in("eval.ratio_threshold", 0.0, 1.0, "replica when nearest/second-nearest < this; "
            "the study uses 1/3", open_lo=True, open_hi=True),
    int_in("eval.blend_k", 0, 1000, "0 = no blend test, else >= 2 neighbours span the hull"),
    int_in("eval.num_heldout", 1, 100_000, "held-out images are held in host memory"),
    real_in("eval.dup_rms", 0.0, 255.0, "RMS pixel difference (0..255) under which train "
            "images merge for the dedup ratio; 0 = exact duplicates only"),
    int_in("eval.every_steps", 0, None, "0 = no over-training curve"),
    int_in("eval.every_num_samples", 2, MAX_BATCH, "sampled in one chunk at each point"),
)


def validate_training_config(training_cfg) -> None:
  """Raises ConfigError naming the first bad `training.*` key."""
  check_section(TRAINING_LIMITS, training_cfg)
  b, a = training_cfg.batch_size, training_cfg.micro_batches
  require(b % a == 0, f"training.batch_size={b} must be divisible by "
          f"training.micro_batches={a}")


def validate_sampling_config(sampling_cfg, num_classes: int | None = None) -> None:
  """Raises ConfigError naming the first bad `sampling.*` key.

  `num_classes` (model.num_classes) adds the one rule that needs it: label -1
  cycles through the classes, which an unconditional model does not have.
  """
  check_section(SAMPLING_LIMITS, sampling_cfg)
  if num_classes is not None:
    require(sampling_cfg.label >= 0 or num_classes > 0,
            f"sampling.label={sampling_cfg.label} (every class in turn) needs a "
            "class-conditional model: set model.num_classes > 0 or sampling.label=0")


def validate_eval_config(eval_cfg) -> None:
  """Raises ConfigError naming the first bad `eval.*` key."""
  check_section(EVAL_LIMITS, eval_cfg)
  require(eval_cfg.blend_k != 1, "eval.blend_k=1: expected 0 (no blend test) or an "
          "integer >= 2")
  require(isinstance(eval_cfg.every_respacing, str),
          f"eval.every_respacing={eval_cfg.every_respacing!r}: expected a respacing string "
          "such as '100' or 'ddim50'")
