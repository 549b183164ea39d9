"""Config validation and the workdir config guard (no compute)."""

import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

from mem_diffusion import config as config_lib
from mem_diffusion import config_guard
import train_helpers as th

CONFIG_MODULES = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(th.REPO, "configs", "*.py"))
    if not os.path.basename(p).startswith("_"))


STUDY_CONFIGS = (
    ["default", "cars_2k", "mondrian_2k", "mondrian_2k_gm_6k", "cars_2k_gm_14k",
     "capacity", "minority_majority"]
    + [f"{kind}_{k}k" for kind in ("gm", "hybrid", "cars_plus", "geometric")
       for k in (1, 2, 4)])


def test_study_configs_exist():
  assert set(STUDY_CONFIGS) <= set(CONFIG_MODULES)


@pytest.mark.parametrize("name", CONFIG_MODULES)
@pytest.mark.parametrize("arg", ["", "tiny"])
def test_every_checked_in_config_is_valid(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config_lib.validate_config(config)
  if name in STUDY_CONFIGS:
    assert config.name.startswith(name)


def test_experiment_configs_keep_what_they_vary():
  from configs import cars_plus_4k, capacity, gm_2k, hybrid_1k, minority_majority, mondrian_2k_gm_6k  # pylint: disable=g-multiple-import
  assert gm_2k.get_config("").data.num_dummy == 2000
  assert gm_2k.get_config("").model.num_classes == 2
  assert gm_2k.get_config("tiny").data.num_dummy == 200
  assert hybrid_1k.get_config("").data.dummy_kind == "hybrid"
  assert cars_plus_4k.get_config("").model.num_classes == 0  # cars only
  m = mondrian_2k_gm_6k.get_config("")
  assert (m.data.dataset, m.data.num_dummy, m.model.num_classes) == ("mondrian", 6000, 2)
  c = capacity.get_config("1000,tiny")
  assert (c.data.num_original, c.name, c.data.image_size) == (100, "capacity_cars_1000", 16)
  assert capacity.get_config("n=500,mondrian").data.dataset == "mondrian"
  mm = minority_majority.get_config("minority=100,majority=900")
  assert tuple(mm.data.class_counts) == (100, 900) and mm.model.num_classes == 2
  with pytest.raises(ValueError, match="unknown config argument 'huge'"):
    gm_2k.get_config("huge")
  with pytest.raises(ValueError, match="capacity.py"):
    capacity.get_config("n=lots")


@pytest.mark.parametrize("key,value,message", [
    ("training.batch_size", 0, "training.batch_size=0"),
    ("training.learning_rate", float("nan"), "training.learning_rate"),
    ("training.ema_decay", 1.0, "training.ema_decay"),
    ("training.micro_batches", 3, "micro_batches=3"),
    ("diffusion.schedule", "quadratic", "diffusion.schedule"),
    ("diffusion.timestep_sampler", "lossaware", "diffusion.timestep_sampler"),
    ("model.compute_dtype", "float16", "model.compute_dtype"),
    ("model.num_classes", 1, "model.num_classes"),
    ("model.attention_resolutions", (3,), "model.attention_resolutions"),
    ("data.dummy_kind", "noise", "data.dummy_kind"),
    ("data.num_dummy", 5, "data.num_dummy"),
    ("sampling.respacing", "ddim", "sampling.respacing"),
    ("eval.ratio_threshold", 1.5, "eval.ratio_threshold"),
    ("seed", -1, "seed"),
])
def test_bad_values_name_their_key(key, value, message):
  config = th.micro_config()
  section, _, name = key.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
    config_lib.validate_config(config, data_checks=False)


def test_wrong_types_name_their_key():
  import ml_collections  # pylint: disable=g-import-not-at-top
  d = th.micro_config().to_dict()
  d["training"]["num_steps"] = "10"
  with pytest.raises(config_lib.ConfigError, match="training.num_steps='10' has type str"):
    config_lib.validate_config(ml_collections.ConfigDict(d))


def test_unknown_and_missing_keys():
  config = th.micro_config()
  config.training.warmup = 10
  with pytest.raises(config_lib.ConfigError, match="unknown config key.*training.warmup"):
    config_lib.validate_config(config)
  config = th.micro_config()
  del config.training["ema_decay"]
  with pytest.raises(config_lib.ConfigError, match="missing config key.*training.ema_decay"):
    config_lib.validate_config(config)


def test_data_package_checks_are_included():
  config = th.micro_config()
  config.data.dataset, config.data.image_size = "cifar_cars", 12
  with pytest.raises(config_lib.ConfigError, match="image_size"):
    config_lib.validate_config(config)


def test_device_divisibility():
  config = th.micro_config(training__batch_size=12, training__micro_batches=2)
  config_lib.check_devices(config, 2)
  with pytest.raises(config_lib.ConfigError, match="batch_size=12.*devices \\(4\\)"):
    config_lib.check_devices(config, 4)


def test_guard_lists_unsafe_changes_and_accepts_safe_ones():
  old = th.micro_config().to_json()
  safe = th.micro_config(training__num_steps=1000, training__log_every=7,
                         sampling__num_samples=5)
  safe.eval.blend_k = 3
  assert sorted(config_guard.guard_workdir_config(old, safe)) == [
      "eval.blend_k", "sampling.num_samples", "training.log_every", "training.num_steps"]
  assert config_guard.guard_workdir_config(old, th.micro_config()) == []
  unsafe = th.micro_config(training__batch_size=16, model__num_res_blocks=2,
                           training__num_steps=5)
  with pytest.raises(config_lib.ConfigError) as e:
    config_guard.guard_workdir_config(old, unsafe)
  message = str(e.value)
  assert "training.batch_size: 8 -> 16" in message
  assert "model.num_res_blocks: 1 -> 2" in message
  assert "training.num_steps: " not in message


# ----------------------------------------------------------------------------
# Limits (docs/reliability.md, "Config limits"): each bound is accepted on its
# edge and refused one step past it.

# (key, values accepted, values refused); the micro config is 8x8 Mondrian
# with a one-level 32-channel UNet, unconditional.
LIMIT_CASES = [
    ("seed", [0, 2**32 - 1], [-1, 2**32, 2**64]),
    ("data.seed", [0, 2**32 - 1], [-1, 2**32]),
    ("sampling.seed", [0, 2**32 - 1], [-1, 2**32]),
    ("diffusion.steps", [2, 100_000], [1, 100_001, 10**12]),
    ("data.image_size", [8, 512], [7, 513, 2**20]),
    ("data.num_original", [1, 1_000_000], [0, 1_000_001]),
    ("data.hybrid_cutoff", [1e-6, 1.0], [0.0, 1.01, float("nan")]),
    ("data.original_share", [0.001, 0.999], [0.0, 1.0]),
    ("model.model_channels", [32, 1024], [0, 48, 1056]),
    ("model.num_res_blocks", [1, 16], [0, 17]),
    ("model.num_heads", [1, 1024], [0, -2, 1025]),
    ("model.dropout", [0.0, 0.999], [-0.1, 1.0]),
    ("model.num_classes", [0, 1000], [1, -1, 1001]),
    ("model.channel_mult", [(1, 1, 1, 1), (8,)], [(1, 1, 1, 1, 1), (0,), (9,), ()]),
    ("training.num_steps", [1, 100_000_000], [0, -3, 100_000_001]),
    ("training.batch_size", [8, 65_536], [0, 65_544]),
    ("training.learning_rate", [1e-8, 1.0], [0.0, -1e-4, 1.5, float("inf"), float("nan")]),
    ("training.weight_decay", [0.0, 1.0], [-0.1, 1.5, float("inf")]),
    ("training.ema_decay", [0.0, 0.99999], [-0.1, 1.0, 1.5]),
    ("training.micro_batches", [1, 8], [0, 3, 16]),
    ("training.keep_checkpoints", [1, 1000], [0, 1001]),
    ("training.log_every", [1, 10**9], [0]),
    ("training.sample_grid_every", [0, 5], [-1]),
    ("training.grid_num_samples", [1, 1024], [0, 1025]),
    ("sampling.num_samples", [2, 1_000_000], [1, 0, 1_000_001]),
    ("sampling.batch_size", [1, 65_536], [0, 65_537]),
    ("sampling.eta", [0.0, 1.0], [-0.1, 1.01]),
    ("sampling.label", [0, 999], [-1, 1000]),
    ("eval.ratio_threshold", [0.01, 0.99], [0.0, 1.0]),
    ("eval.blend_k", [0, 2, 1000], [-1, 1, 1001]),
    ("eval.num_heldout", [1, 100_000], [0, 100_001]),
]


def _set(config, key, value):
  section, _, name = key.rpartition(".")
  (config[section] if section else config)[name] = value
  return config


@pytest.mark.parametrize("key,good,bad", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_limits_accept_the_edge_and_refuse_past_it(key, good, bad):
  for value in good:
    config_lib.validate_config(_set(th.micro_config(), key, value))
  for value in bad:
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate_config(_set(th.micro_config(), key, value))
    message = str(e.value)
    assert "\n" not in message and key.rpartition(".")[2] in message, (value, message)


def test_attention_levels_need_heads_that_divide_their_channels():
  # 8x8 images, two levels of 32 and 64 channels, attention at 4x4 (64 channels).
  config = th.micro_config(model__channel_mult=(1, 2), model__attention_resolutions=(4,))
  for heads in (1, 2, 64):
    config_lib.validate_config(_set(config, "model.num_heads", heads))
  with pytest.raises(config_lib.ConfigError, match=r"model\.num_heads=3 does not divide 64"):
    config_lib.validate_config(_set(config, "model.num_heads", 3))


def test_train_set_must_fit_in_host_memory():
  config = th.micro_config(data__image_size=512, data__num_original=100_000)
  with pytest.raises(config_lib.ConfigError, match=r"data\.num_original.*73 GiB"):
    config_lib.validate_config(config)


def test_cifar_classes_counts_are_bounded_by_the_class_size():
  config = th.micro_config(data__dataset="cifar_classes", data__classes=(1, 9),
                           data__class_counts=(6000, 1), data__image_size=16,
                           model__num_classes=2)
  config_lib.validate_config(config)
  config.data.class_counts = (6001, 1)
  with pytest.raises(config_lib.ConfigError, match=r"data\.class_counts=\(6001, 1\)"):
    config_lib.validate_config(config)


def _refusal(key, value):
  """validate_config's message for the micro config with `key` = `value`, or None."""
  try:
    config_lib.validate_config(_set(th.micro_config(), key, value))
  except config_lib.ConfigError as e:
    return str(e)
  return None


def test_every_numeric_key_has_a_limit_and_a_docs_row():
  """Absurd values of every numeric key are refused, and the bound a message
  states is the one docs/reliability.md's table gives (the table cannot drift)."""
  with open(os.path.join(th.REPO, "docs", "reliability.md")) as f:
    docs = f.read().split("## Config limits", 1)[1].split("Rules between keys", 1)[0]
  # A row's first cell names one key or several: `seed`, `data.seed`, ...
  rows = {key: line for line in docs.splitlines() if line.startswith("| `")
          for key in re.findall(r"`([a-z_.]+)`", line.split("|")[1])}
  schema = config_lib.flatten(config_lib.schema())
  assert set(rows) <= set(schema), set(rows) - set(schema)
  for key, default in schema.items():
    if isinstance(default, bool):
      continue
    if isinstance(default, list):
      probes = [(-10**9,), (10**12,)]
    elif isinstance(default, (int, float)):
      probes = [-10**9, 10**12] + ([float("nan")] if isinstance(default, float) else [])
    else:
      probes = ["?"]
    # Messages about this key (a probe can also trip a rule that names another).
    messages = [m for m in (_refusal(key, p) for p in probes)
                if m is not None and key.rpartition(".")[2] in m]
    if isinstance(default, str) and not messages:
      continue  # a free string: a path or the run's name
    assert messages, f"{key} accepts {probes}"
    assert key in rows, f"docs/reliability.md has no row for {key}"
    for message in messages:
      assert "\n" not in message, message
      if message.startswith(f"{key}=") and ": expected " in message:
        allowed = message.split(": expected ", 1)[1].split("; ")[0]
        assert allowed in rows[key], (allowed, rows[key])


def test_validation_is_repeatable_and_leaves_the_config_alone():
  config = th.micro_config()
  before = config.to_json()
  for _ in range(3):
    config_lib.validate_config(config)
  assert config.to_json() == before


def test_canonical_lists_have_one_owner():
  """Validation checks against the lists of the code that implements them."""
  from mem_diffusion.data import train_set  # pylint: disable=g-import-not-at-top
  from mem_diffusion.models import unet  # pylint: disable=g-import-not-at-top
  config = th.micro_config(data__dataset="nope")
  with pytest.raises(config_lib.ConfigError, match="one of " + ", ".join(
      repr(d) for d in train_set.DATASETS)):
    config_lib.validate_config(config)
  assert tuple(unet._DTYPES) == unet.COMPUTE_DTYPES  # pylint: disable=protected-access
  # config.py keeps no copy of a component's list.
  assert not {"DATASETS", "DUMMY_KINDS", "SCHEDULES", "LOSSES", "LOSS_TYPES", "COMPUTE_DTYPES",
              "TIMESTEP_SAMPLERS", "DATA_SAMPLING", "SAMPLING", "NUM_GROUPS",
              "HYBRID_MASKS"} & set(vars(config_lib))


def test_only_the_loader_imports_configs():
  offenders = []
  for root, _, files in os.walk(os.path.join(th.REPO, "mem_diffusion")):
    for f in files:
      if f.endswith(".py") and f != "config.py":
        for i, line in enumerate(open(os.path.join(root, f)), 1):
          if re.match(r"\s*(from configs\b|import configs\b)", line):
            offenders.append(f"{f}:{i}")
  assert not offenders, offenders


# ----------------------------------------------------------------------------
# The schema and the loader.

def test_validation_does_not_import_tensorflow():
  """The data rules run in a process that never loads TensorFlow."""
  code = "\n".join([
      "import sys",
      "from mem_diffusion import config as config_lib",
      "config = config_lib.load_config('configs/cars_2k_gm_14k.py')",
      "config_lib.validate_config(config)",
      "config.data.image_size = 12",
      "try:",
      "  config_lib.validate_config(config)",
      "except config_lib.ConfigError as e:",
      "  print('refused:', e)",
      "print('tensorflow loaded:', any(m.split('.')[0] == 'tensorflow' for m in sys.modules))",
  ])
  r = subprocess.run([sys.executable, "-c", code], cwd=th.REPO, env=th.subprocess_env(1),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "refused: data.image_size=12 must divide 32" in r.stdout, r.stdout
  assert "tensorflow loaded: False" in r.stdout, r.stdout


def test_config_recorded_before_a_key_existed_counts_as_its_legacy_value():
  """A workdir made before data.hybrid_mask existed built hybrids by corner radius."""
  from configs import default
  config = default.get_config("tiny")
  old = config.to_dict()
  del old["data"]["hybrid_mask"]
  config.data.hybrid_mask = "corner_radius"
  assert config_guard.config_changes(old, config.to_dict()) == ([], [])
  config.data.hybrid_mask = "bin_fraction"
  assert config_guard.config_changes(old, config.to_dict())[0] == ["data.hybrid_mask"]
