"""Entry point: python main.py --config=configs/gm_2k.py --workdir=runs/gm_2k.

Modes: train | sample | eval | all ('all' runs the stages in order and skips
the ones whose outputs are complete). Config errors print one line
`error: ...` and exit 2 before any compute; a diverged run exits 1; a run
stopped by SIGTERM/SIGINT saves its step and exits 128 + signal number.
Multi-host: pass --coordinator_address/--num_processes/--process_id (or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables), or
--multihost to let JAX detect the cluster (TPU pods, SLURM).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, "
                                "e.g. configs/gm_2k.py or configs/gm_2k.py:tiny.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples, reports.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "all"], "Stage(s) to run.")
flags.DEFINE_bool("multihost", False, "jax.distributed.initialize() with cluster auto-detection.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")


def _fail(message: str, code: int) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _done(workdir: str, mode: str) -> bool:
  """Whether a stage's outputs are already complete (for --mode=all)."""
  if mode == "sample":
    samples = os.path.join(workdir, "samples")
    return os.path.isdir(samples) and any(
        f.startswith("samples_") and f.endswith(".npz") for f in os.listdir(samples))
  if mode == "eval":
    return os.path.exists(os.path.join(workdir, "eval", "report.json"))
  return False  # training decides itself: it resumes, or stops at once when done


def _is_data_error(e: Exception) -> bool:
  """An error raised on purpose by the data modules (e.g. CIFAR-10 missing).

  Matched by the module that defines its class, so checking does not import
  the data package (and TensorFlow) when no data error occurred.
  """
  return type(e).__module__.startswith("mem_diffusion.data")


def run(config, workdir: str, mode: str) -> None:
  """Runs the stage(s); lazy imports keep `--help` fast and TF-free."""
  stages = ["train", "sample", "eval"] if mode == "all" else [mode]
  for stage in stages:
    if mode == "all" and _done(workdir, stage):
      logging.info("skipping %s: its outputs exist in %s", stage, workdir)
      continue
    if stage == "train":
      from mem_diffusion import train  # pylint: disable=g-import-not-at-top
      train.train_and_evaluate(config, workdir)
    elif stage == "sample":
      try:
        from mem_diffusion import sampling  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise NotImplementedError(f"--mode=sample needs mem_diffusion.sampling ({e})") from e
      sampling.sample_to_workdir(config, workdir)
    else:
      try:
        from mem_diffusion import evaluate  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise NotImplementedError(f"--mode=eval needs mem_diffusion.evaluate ({e})") from e
      evaluate.evaluate_workdir(config, workdir)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
  try:
    config = FLAGS.config
    if config is not None:
      config.to_dict()  # a config file that failed to load raises here
  except OSError as e:  # ml_collections defers "file not found" to first use
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    _fail(f"cannot load the config file: {lines[-1]}", 2)
  if config is None or not FLAGS.workdir:
    _fail("--config and --workdir are required", 2)
  # Imported here, after flag parsing: JAX must not start before the
  # distributed runtime is initialised.
  from mem_diffusion import checkpoint, npz_io, parallel, train, validate, workdir_lock  # pylint: disable=g-import-not-at-top,g-multiple-import
  try:
    # Cheap checks first, before TensorFlow is imported: the TF-free config
    # rules, then the workdir lock; the data rules (which import the data
    # package) only once the run is ours.
    validate.validate_config(config, data_checks=False)
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id, auto=FLAGS.multihost)
    # One run per workdir (process 0 of a multi-process run stands for all).
    with workdir_lock.hold_for_run(FLAGS.workdir):
      validate.validate_config(config)
      run(config, FLAGS.workdir, FLAGS.mode)
  except (validate.ConfigError, NotImplementedError, workdir_lock.WorkdirLocked) as e:
    _fail(str(e), 2)
  except checkpoint.CheckpointCorruptError as e:
    _fail(str(e), 1)
  except (FileNotFoundError, npz_io.InputError) as e:  # e.g. sample before train
    _fail(str(e), 2)
  except train.TrainingDivergedError as e:
    _fail(str(e), 1)
  except train.Preempted as e:
    logging.warning("%s", e)
    print(f"preempted: {e}", file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except Exception as e:  # pylint: disable=broad-except
    if not _is_data_error(e):
      raise
    _fail(str(e), 2)


def _parse_flags(argv):
  """absl's parser, but a bad flag or config override is one `error:` line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    # A config file that raises is reported with its traceback inside the
    # message: its last line is the exception itself.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    message = lines[-1] if "Traceback" in str(e) else lines[0]
    _fail(message, 2)
  except (KeyError, AttributeError) as e:
    # ml_collections: an override `--config.a.b=v` of a key that does not exist.
    name = str(e.args[0] if e.args else e).strip("'\"")
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.")
           and name in a.split("=")[0].split(".")]
    _fail(f"unknown config key {name!r}" + (f" in {bad[0]}" if bad else ""), 2)
  except (ValueError, TypeError) as e:
    _fail(f"bad config override: {e}".splitlines()[0], 2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
