"""Config validation and the workdir config guard (no compute)."""

import glob
import importlib
import os

import pytest

from mem_diffusion import validate
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
  validate.validate_config(config)
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
    ("training.grad_accum_steps", 3, "grad_accum_steps=3"),
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
  with pytest.raises(validate.ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
    validate.validate_config(config, data_checks=False)


def test_wrong_types_name_their_key():
  import ml_collections  # pylint: disable=g-import-not-at-top
  d = th.micro_config().to_dict()
  d["training"]["num_steps"] = "10"
  with pytest.raises(validate.ConfigError, match="training.num_steps='10' has type str"):
    validate.validate_config(ml_collections.ConfigDict(d))


def test_unknown_and_missing_keys():
  config = th.micro_config()
  config.training.warmup = 10
  with pytest.raises(validate.ConfigError, match="unknown config key.*training.warmup"):
    validate.validate_config(config)
  config = th.micro_config()
  del config.training["ema_decay"]
  with pytest.raises(validate.ConfigError, match="missing config key.*training.ema_decay"):
    validate.validate_config(config)


def test_data_package_checks_are_included():
  config = th.micro_config()
  config.data.dataset, config.data.image_size = "cifar_cars", 12
  with pytest.raises(validate.ConfigError, match="image_size"):
    validate.validate_config(config)


def test_device_divisibility():
  config = th.micro_config(training__batch_size=12, training__grad_accum_steps=2)
  validate.check_devices(config, 2)
  with pytest.raises(validate.ConfigError, match="batch_size=12.*devices \\(4\\)"):
    validate.check_devices(config, 4)


def test_guard_lists_unsafe_changes_and_accepts_safe_ones():
  old = th.micro_config().to_json()
  safe = th.micro_config(training__num_steps=1000, training__log_every=7,
                         sampling__num_samples=5)
  safe.eval.blend_k = 3
  assert sorted(validate.guard_workdir_config(old, safe)) == [
      "eval.blend_k", "sampling.num_samples", "training.log_every", "training.num_steps"]
  assert validate.guard_workdir_config(old, th.micro_config()) == []
  unsafe = th.micro_config(training__batch_size=16, model__num_res_blocks=2,
                           training__num_steps=5)
  with pytest.raises(validate.ConfigError) as e:
    validate.guard_workdir_config(old, unsafe)
  message = str(e.value)
  assert "training.batch_size: 8 -> 16" in message
  assert "model.num_res_blocks: 1 -> 2" in message
  assert "training.num_steps: " not in message


def test_config_recorded_before_a_key_existed_counts_as_its_legacy_value():
  """A workdir made before data.hybrid_mask existed built hybrids by corner radius."""
  from configs import default
  config = default.get_config("tiny")
  old = config.to_dict()
  del old["data"]["hybrid_mask"]
  config.data.hybrid_mask = "corner_radius"
  assert validate.config_changes(old, config.to_dict()) == ([], [])
  config.data.hybrid_mask = "bin_fraction"
  assert validate.config_changes(old, config.to_dict())[0] == ["data.hybrid_mask"]
