"""Bad input: every bad config stops with a one-line message that
names the key, before anything is compiled; bad files for the converter are
refused without unpickling; eval interrupted midway is redone cleanly.

The config table runs the same path as `main.py --mode=train` in this
process (validate_config, then train_and_evaluate up to its first compile,
which the test forbids), because each real `main.py` start costs seconds of
imports; three real subprocess cases prove the exit code and the single line.
The replicates CLI's bad files: tests/test_replicates.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mem_diffusion.port import convert
from mem_diffusion.run import evaluate, sampling, train
from mem_diffusion import config as config_lib
import train_helpers as th


def _cifar_with_gm(**changes):
  """A conditional CIFAR-classes run with GM dummies (3 classes + GM = 4 labels)."""
  base = dict(data__dataset="cifar_classes", data__classes=(1, 3, 5),
              data__class_counts=(10, 10, 10), data__dummy_kind="gm", data__num_dummy=8,
              model__num_classes=4)
  base.update(changes)
  return base


# (case id, micro_config changes, text the one-line message must contain)
BAD_CONFIGS = [
    ("unknown_dummy_kind", dict(data__dummy_kind="noise", data__num_dummy=8), "data.dummy_kind"),
    ("unknown_dataset", dict(data__dataset="imagenet"), "data.dataset"),
    ("zero_image_size", dict(data__image_size=0), "data.image_size"),
    ("negative_num_original", dict(data__num_original=-5), "data.num_original"),
    ("negative_num_dummy", dict(data__num_dummy=-1), "data.num_dummy"),
    ("zero_batch", dict(training__batch_size=0), "training.batch_size"),
    ("negative_steps", dict(training__num_steps=-3), "training.num_steps"),
    ("zero_channels", dict(model__model_channels=0), "model.model_channels"),
    ("zero_res_blocks", dict(model__num_res_blocks=0), "model.num_res_blocks"),
    ("one_diffusion_step", dict(diffusion__steps=1), "diffusion.steps"),
    ("zero_samples", dict(sampling__num_samples=0), "sampling.num_samples"),
    ("batch_not_over_4_devices", dict(training__batch_size=6), "training.batch_size=6"),
    ("batch_not_over_accum", dict(training__micro_batches=3), "micro_batches=3"),
    ("attention_at_missing_resolution", dict(model__attention_resolutions=(16,)),
     "attention_resolutions"),
    ("channels_not_divisible_by_32_groups", dict(model__model_channels=48),
     "48 channels is not divisible by the 32 GroupNorm groups"),
    ("image_size_unet_cannot_take", dict(data__image_size=12, model__channel_mult=(1, 2, 2, 2)),
     "image_size"),
    ("cifar_image_size_not_dividing_32", dict(data__dataset="cifar_cars", data__image_size=12),
     "data.image_size"),
    ("num_classes_too_small_for_labels", _cifar_with_gm(model__num_classes=3), "model.num_classes"),
    ("num_classes_one", dict(model__num_classes=1), "model.num_classes"),
    ("sampling_label_out_of_range", _cifar_with_gm(sampling__label=4), "sampling.label"),
    ("unknown_schedule", dict(diffusion__schedule="quadratic"), "diffusion.schedule"),
    ("unknown_loss", dict(diffusion__loss="l1"), "diffusion.loss"),
    ("bad_respacing_word", dict(sampling__respacing="fast"), "sampling.respacing"),
    ("bad_respacing_list", dict(sampling__respacing="10,x"), "sampling.respacing"),
    ("bad_grid_respacing", dict(training__grid_respacing="ddim"), "training.grid_respacing"),
    ("respacing_longer_than_chain", dict(diffusion__steps=20, sampling__respacing="50"),
     "sampling.respacing='50'"),
    ("ddim_respacing_impossible", dict(diffusion__steps=20, sampling__respacing="ddim8"),
     "sampling.respacing='ddim8'"),
    ("blend_k_one", dict(eval__blend_k=1), "eval.blend_k"),
    ("nan_learning_rate", dict(training__learning_rate=float("nan")), "training.learning_rate"),
    ("negative_learning_rate", dict(training__learning_rate=-1e-4), "training.learning_rate"),
    ("ema_decay_above_one", dict(training__ema_decay=1.5), "training.ema_decay"),
    ("dropout_one", dict(model__dropout=1.0), "model.dropout"),
    ("threshold_zero", dict(eval__ratio_threshold=0.0), "eval.ratio_threshold"),
    ("string_for_int", dict(training__num_steps="10"), "training.num_steps"),
    ("unknown_key", dict(training__warmup_steps=10), "training.warmup_steps"),
    ("class_counts_mismatch", dict(data__dataset="cifar_classes", data__classes=(1, 2),
                                   data__class_counts=(5,)), "data.class"),
    ("cars_dummy_with_mondrian", dict(data__dummy_kind="cars", data__num_dummy=8),
     "data.dummy_kind"),
    ("unknown_dtype", dict(model__compute_dtype="float16"), "model.compute_dtype"),
    # Limits (docs/reliability.md, "Config limits"); the edges are in test_validate.py.
    ("chain_too_long_to_build", dict(diffusion__steps=10**12), "diffusion.steps"),
    ("image_size_absurd", dict(data__image_size=2**16), "data.image_size"),
    ("image_size_too_small_for_levels", dict(model__channel_mult=(1, 1, 1, 1, 1)),
     "data.image_size=8 is not divisible by 2**(len(channel_mult)-1)=16"),
    ("too_many_levels", dict(data__image_size=512, model__channel_mult=(1,) * 8),
     "model.channel_mult"),
    ("zero_heads", dict(model__num_heads=0), "model.num_heads"),
    ("heads_not_dividing_attention_channels",
     dict(model__channel_mult=(1, 2), model__attention_resolutions=(4,), model__num_heads=3),
     "model.num_heads=3 does not divide 64"),
    ("seed_beyond_64_bits", dict(seed=2**64), "seed="),
    ("seed_beyond_32_bits", dict(seed=2**32), "seed="),
    ("data_seed_negative", dict(data__seed=-1), "data.seed"),
    ("sampling_seed_too_large", dict(sampling__seed=2**40), "sampling.seed"),
    ("zero_train_steps", dict(training__num_steps=0), "training.num_steps"),
    ("infinite_learning_rate", dict(training__learning_rate=float("inf")),
     "training.learning_rate"),
    ("ema_decay_one", dict(training__ema_decay=1.0), "training.ema_decay"),
    ("negative_dropout", dict(model__dropout=-0.1), "model.dropout"),
    ("ddim_eta_above_one", dict(sampling__eta=1.5), "sampling.eta"),
    ("zero_sampling_batch", dict(sampling__batch_size=0), "sampling.batch_size"),
    ("too_many_samples", dict(sampling__num_samples=10**7), "sampling.num_samples"),
    ("hybrid_cutoff_zero", dict(data__hybrid_cutoff=0.0), "data.hybrid_cutoff"),
    ("train_set_beyond_host_memory", dict(data__image_size=512, data__num_original=200_000),
     "GiB of host memory"),
    ("zero_heldout", dict(eval__num_heldout=0), "eval.num_heldout"),
]


def _config(changes):
  """micro_config with `changes`, through a dict so wrong types and unknown
  keys get in (ConfigDict's own type checks would stop them in this test)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  d = th.micro_config().to_dict()
  for key, value in changes.items():
    if "__" in key:
      section, name = key.split("__")
      d[section][name] = value
    else:  # a top-level key such as seed
      d[key] = value
  return ml_collections.ConfigDict(d)


class _ComputeStarted(AssertionError):
  pass


def _one_line_error(config, workdir, monkeypatch):
  """What main.py would print for `config`, or None if it would run.

  Runs main's path (validate_config, then train_and_evaluate) but makes the
  first compile (train.build) fail the test: errors must come before it.
  """
  def no_compute(*a, **k):
    raise _ComputeStarted("train.build reached: the error came after compute began")
  monkeypatch.setattr(train, "build", no_compute)
  try:
    config_lib.validate_config(config)
    train.train_and_evaluate(config, workdir)
  except config_lib.ConfigError as e:
    return str(e)
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__module__.startswith("mem_diffusion.data"):  # main.py's one-line class
      return str(e)
    raise
  return None


@pytest.mark.parametrize("name,changes,needle", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_one_line_before_compute(name, changes, needle, tmp_path, monkeypatch):
  del name
  workdir = str(tmp_path / "w")
  message = _one_line_error(_config(changes), workdir, monkeypatch)
  assert message is not None, "accepted"
  assert "\n" not in message and needle in message, message
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_good_micro_config_reaches_compute(tmp_path, monkeypatch):
  """The harness above can tell a good config from a bad one."""
  with pytest.raises(_ComputeStarted):
    _one_line_error(th.micro_config(), str(tmp_path / "w"), monkeypatch)


def test_missing_cifar_offline_via_tfds_data_dir(tmp_path, monkeypatch):
  empty = tmp_path / "empty_tfds"
  empty.mkdir()
  config = _config(dict(data__dataset="cifar_cars", data__num_original=16))
  config.data.tfds_data_dir = str(empty)
  config.data.download = False  # never reach the internet from a test
  monkeypatch.setenv("TFDS_DATA_DIR", str(empty))
  message = _one_line_error(config, str(tmp_path / "w"), monkeypatch)
  # The first line is the error; the lines after it are the offline how-to.
  first = message.splitlines()[0]
  assert first.startswith(f"CIFAR-10 is not prepared in {empty} (taken from "
                          "data.tfds_data_dir"), message


def _main(args, timeout=180):
  return subprocess.run([sys.executable, os.path.join(th.REPO, "main.py")] + args,
                        cwd=th.REPO, env=th.subprocess_env(4), capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize("changes,needle", [
    (dict(model__model_channels=48), "error: "),
    (dict(sampling__respacing="10,x"), "error: sampling.respacing='10,x'"),
    (dict(training__batch_size=6), "error: training.batch_size=6 must be divisible by the "
     "number of devices (4)"),
], ids=["groupnorm_channels", "respacing", "devices"])
def test_bad_config_through_the_real_cli(changes, needle, tmp_path):
  r = _main(th.override_flags(**changes) + [f"--workdir={tmp_path / 'w'}"])
  assert r.returncode == 2, r.stderr[-3000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(needle), r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


# ----------------------------------------------------------------------------
# Bad files for the converter: one message, nothing unpickled.

GOLDEN = os.path.join(th.REPO, "tests", "data", "unet_a.npz")


def _golden_arrays():
  with np.load(GOLDEN, allow_pickle=False) as d:
    return {k: d[k] for k in d.files}


def _write_bad_npz(path, how):
  arrays = _golden_arrays()
  name = "param/out.2.weight"
  if how == "empty_file":
    open(path, "wb").close()
  elif how == "truncated":
    data = open(GOLDEN, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
  elif how == "object_array":
    arrays[name] = np.array([arrays[name], None], dtype=object)
    np.savez(path, **arrays)  # pickled inside the archive
  elif how == "nan_weights":
    arrays[name] = np.full_like(arrays[name], np.nan)
    np.savez(path, **arrays)
  elif how == "integer_weights":
    arrays[name] = arrays[name].astype(np.int64)
    np.savez(path, **arrays)
  elif how == "string_weights":
    arrays[name] = np.array(["a"] * 4)
    np.savez(path, **arrays)
  elif how == "wrong_shape":
    arrays[name] = arrays[name][:, :1]
    np.savez(path, **arrays)
  elif how == "no_arrays":
    np.savez(path)
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how,needle", [
    ("empty_file", "not a readable .npz"),
    ("truncated", "not a readable .npz"),
    ("object_array", "pickle"),
    ("nan_weights", "non-finite"),
    ("integer_weights", "dtype int64"),
    ("string_weights", "dtype <U1"),
    ("wrong_shape", "wrong shape (1): out.2.weight"),
    ("no_arrays", "no 'param/<name>' arrays"),
])
def test_converter_bad_files(how, needle, tmp_path, monkeypatch):
  path = str(tmp_path / "in.npz")
  _write_bad_npz(path, how)
  loads = []
  import pickle  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(pickle, "loads", lambda *a, **k: loads.append(1))
  monkeypatch.setattr(pickle, "load", lambda *a, **k: loads.append(1))
  out = tmp_path / "out.msgpack"
  with pytest.raises(SystemExit) as err:
    convert.main([path, str(out)])
  message = str(err.value.code)
  assert message.startswith(f"convert: {path}: ") and needle in message, message
  assert not loads and not out.exists()


def test_nothing_in_the_package_unpickles():
  """No np.load without allow_pickle=False, no torch.load without weights_only."""
  offenders = []
  for root, _, files in os.walk(os.path.join(th.REPO, "mem_diffusion")):
    for f in files:
      if not f.endswith(".py"):
        continue
      text = open(os.path.join(root, f)).read()
      for i, line in enumerate(text.splitlines(), 1):
        if "allow_pickle=True" in line or "pickle.load" in line:
          offenders.append(f"{f}:{i}")
        if "torch.load(" in line and "weights_only=True" not in line:
          offenders.append(f"{f}:{i}")
        if "np.load(" in line and "allow_pickle=False" not in line:
          offenders.append(f"{f}:{i}")
  assert not offenders, offenders


# ----------------------------------------------------------------------------
# Eval killed midway: report.json is written last, so a rerun redoes it.

def test_partial_eval_is_redone_and_matches_a_clean_one(tmp_path):
  from mem_diffusion import data  # pylint: disable=g-import-not-at-top,g-multiple-import
  from mem_diffusion.run import stages  # pylint: disable=g-import-not-at-top,g-multiple-import
  config = th.micro_config()
  config.eval.num_heldout = 8
  images = data.heldout_images(config.data, 8 + 12)[8:]
  reports = []
  for name, partial in (("clean", False), ("killed", True)):
    workdir = str(tmp_path / name)
    os.makedirs(os.path.join(workdir, "samples"))
    np.savez(sampling.samples_path(config, workdir), arr_0=images,
             arr_1=np.zeros(len(images), np.int64))
    if partial:  # what a SIGKILL after the figures but before report.json leaves
      eval_dir = os.path.join(workdir, "eval")
      os.makedirs(eval_dir)
      for f in ("per_sample.npz", "nearest_neighbors.png", ".tmp_x.json"):
        with open(os.path.join(eval_dir, f), "wb") as fh:
          fh.write(b"half-written")
      assert not stages.is_complete(config, workdir, "eval")
    evaluate.evaluate_workdir(config, workdir)
    with open(os.path.join(workdir, "eval", "report.json")) as f:
      report = json.load(f)
    reports.append({k: v for k, v in report.items()
                    if k != "samples_path" and "second" not in k and "time" not in k})
    with np.load(os.path.join(workdir, "eval", "per_sample.npz"), allow_pickle=False) as f:
      assert f["ratio"].shape == (len(images),)
  assert reports[0] == reports[1]


# ----------------------------------------------------------------------------
# Input files that are not files: through the real CLI, one line,
# exit 2, within the subprocess timeout (a FIFO must not block the open).

@pytest.mark.parametrize("kind,needle", [
    ("dev_zero", "a character device, not a regular file"),
    ("fifo", "a FIFO (named pipe), not a regular file"),
    ("zero_filled", "zero-filled (4,096 bytes)"),
])
def test_bad_params_file_through_the_real_cli(kind, needle, tmp_path):
  path = "/dev/zero" if kind == "dev_zero" else str(tmp_path / "params.msgpack")
  if kind == "fifo":
    os.mkfifo(path)
  elif kind == "zero_filled":
    open(path, "wb").write(b"\0" * 4096)
  r = _main(th.override_flags(sampling__params_file=path)
            + [f"--workdir={tmp_path / 'w'}", "--mode=sample"])
  assert r.returncode == 2, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, r.stderr[-3000:]
  assert lines[0].startswith(f"error: sampling.params_file {path!r}") and needle in lines[0], lines
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w" / "samples")
