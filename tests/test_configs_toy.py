"""The toy configs: their tokens, and names that tell every setting apart
(a config's name is a sweep's workdir, so two settings must never share one);
and the `bf16` token every config file takes."""

import glob
import itertools
import os

import pytest

from configs import toy_capacity, toy_dummies, toy_minority_majority
from mem_diffusion import config as config_lib


def test_toy_dummies_batch_token_and_balanced_rows():
  config = toy_dummies.get_config("kind=gm,m=64,sampling=balanced,batch=32")
  config_lib.validate_config(config)
  assert config.training.batch_size == 32
  # Balanced at batch 32: 16 Mondrian rows per step, the no-dummy run's batch.
  no_dummy = toy_capacity.get_config("16")
  assert round(config.data.original_share * 32) == no_dummy.training.batch_size == 16
  assert toy_dummies.get_config("").training.batch_size == 16


def test_toy_dummies_accepts_mondrian_hybrids():
  config = toy_dummies.get_config("kind=hybrid,m=32")
  config_lib.validate_config(config)
  assert (config.data.dataset, config.data.dummy_kind, config.model.num_classes) == (
      "mondrian", "hybrid", 2)
  assert config.name == "toy_hybrid_32_uniform"
  with pytest.raises(ValueError, match="kind='cars'"):
    toy_dummies.get_config("kind=cars")
  with pytest.raises(ValueError, match="batch"):
    toy_dummies.get_config("batch=many")


def test_toy_names_encode_every_non_default_token():
  assert toy_dummies.get_config("").name == "toy_gm_64_uniform"
  assert toy_dummies.get_config(f"steps={toy_capacity.TOY_STEPS},batch=16,n=16").name == (
      "toy_gm_64_uniform")
  assert toy_dummies.get_config("n=8,batch=32,steps=500").name == "toy_gm_64_uniform_n8_b32_s500"
  assert toy_capacity.get_config("64").name == "toy_capacity_64"
  assert toy_capacity.get_config("64,steps=4000").name == "toy_capacity_64_s4000"
  # Every combination of tokens gets its own name.
  args = [",".join(t) for t in itertools.product(
      ("kind=gm", "kind=hybrid"), ("m=8", "m=64"), ("sampling=uniform", "sampling=balanced"),
      ("n=16", "n=8"), ("batch=16", "batch=32"), ("steps=2000", "steps=500"))]
  names = [toy_dummies.get_config(a).name for a in args]
  assert len(set(names)) == len(args)


def test_toy_minority_majority():
  config = toy_minority_majority.get_config("")
  config_lib.validate_config(config)
  assert config.name == "toy_minority_majority_16_240"
  assert (config.data.dataset, tuple(config.data.class_counts)) == ("mondrian_classes", (16, 240))
  assert config.model.num_classes == 2 and config.sampling.label == -1
  assert config.data.image_size == toy_capacity.TOY_IMAGE_SIZE
  assert config.training.num_steps == toy_capacity.TOY_STEPS
  other = toy_minority_majority.get_config("minority=8,majority=120,steps=500")
  assert other.name == "toy_minority_majority_8_120_s500"
  assert tuple(other.data.class_counts) == (8, 120) and other.training.num_steps == 500
  assert toy_minority_majority.get_config("tiny").training.num_steps == 300
  with pytest.raises(ValueError, match="minority must be >= 1"):
    toy_minority_majority.get_config("minority=0")


def _config_files():
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(root, "*.py")))
  return [n for n in names if not n.startswith("_") and n != "default"]


@pytest.mark.parametrize("name", _config_files())
def test_every_config_takes_bf16(name):
  """`bf16` switches the compute dtype in every file, alone or with tiny, and
  names the run apart from its float32 twin; float32 stays the default."""
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  base, tiny = module.get_config(""), module.get_config("tiny")
  assert base.model.compute_dtype == "float32"
  for arg, plain in (("bf16", base), ("tiny,bf16", tiny), ("bf16,tiny", tiny)):
    config = module.get_config(arg)
    config_lib.validate_config(config)
    assert config.model.compute_dtype == "bfloat16"
    assert config.name == plain.name + "_bf16"
    config.model.compute_dtype, config.name = "float32", plain.name
    assert config.to_dict() == plain.to_dict()
  with pytest.raises(ValueError, match="accepted, comma-separated: .*bf16"):
    module.get_config("fp8")
