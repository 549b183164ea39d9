"""Loading config files: the schema, one-line loader errors, arguments and overrides."""

import os
import re

import pytest

from mem_diffusion import config as config_lib
import train_helpers as th


@pytest.fixture
def fresh_schema():
  config_lib.schema.cache_clear()
  yield config_lib
  config_lib.schema.cache_clear()


def test_missing_schema_is_an_error_not_a_skip(fresh_schema, monkeypatch, tmp_path):
  monkeypatch.setattr(fresh_schema, "SCHEMA_FILE", str(tmp_path / "configs" / "default.py"))
  with pytest.raises(config_lib.ConfigError, match="config schema .*default.py is missing"):
    config_lib.validate_config(th.micro_config())


def test_broken_schema_is_an_error(fresh_schema, monkeypatch, tmp_path):
  path = tmp_path / "default.py"
  path.write_text("def get_config(arg=''):\n  raise RuntimeError('schema broke')\n")
  monkeypatch.setattr(fresh_schema, "SCHEMA_FILE", str(path))
  with pytest.raises(config_lib.ConfigError,
                     match="schema cannot be loaded: .*RuntimeError: schema broke"):
    config_lib.validate_config(th.micro_config())


@pytest.mark.parametrize("source,needle", [
    (None, "config file '{path}' not found"),
    ("x = 1\n", "defines no get_config() function"),
    ("def get_config(arg=''):\n  raise ValueError('first line\\nunknown argument ' + arg)\n",
     "get_config('huge') failed (ValueError: unknown argument huge)"),
    ("def get_config(arg=''):\n  return {'a': 1}\n", "returned dict, not an ml_collections"),
    ("def get_config(:\n", "failed to import (SyntaxError"),
    ("import no_such_module_here\n", "failed to import (ModuleNotFoundError"),
], ids=["missing", "no_get_config", "get_config_raises", "not_a_configdict", "syntax",
        "import_error"])
def test_loader_errors_are_one_line(source, needle, tmp_path):
  path = tmp_path / "exp.py"
  if source is not None:
    path.write_text(source)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load_config(f"{path}:huge")
  message = str(e.value)
  assert "\n" not in message and needle.format(path=path) in message, message


def test_loader_refuses_a_file_that_is_not_python():
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load_config(os.path.join(th.REPO, "README.md"))
  assert str(e.value).startswith(f"config file '{th.REPO}/README.md' is not Python"), e.value


def test_loader_reads_experiment_files_and_arguments():
  from mem_diffusion.port import convert  # pylint: disable=g-multiple-import,g-import-not-at-top
  from mem_diffusion.experiments import sweep  # pylint: disable=g-multiple-import,g-import-not-at-top
  config = config_lib.load_config(os.path.join(th.REPO, "configs", "gm_2k.py:tiny"))
  assert (config.data.num_dummy, config.data.image_size) == (200, 16)
  # Locked, as ml_collections' config flags lock it: a typo cannot add a key.
  with pytest.raises(AttributeError, match="warmup"):
    config.training.warmup = 10
  with pytest.raises(config_lib.ConfigError, match="unknown config argument 'huge'"):
    config_lib.load_config(os.path.join(th.REPO, "configs", "gm_2k.py:huge"))
  # The CLIs keep their names for the same functions.
  assert convert.load_config is sweep.load_config is config_lib.load_config
  assert sweep.apply_override is config_lib.apply_override


def test_override_errors_are_config_errors():
  config = th.micro_config()
  config_lib.apply_override(config, "model.channel_mult=1,2")
  assert config.model.channel_mult == (1, 2)
  # Parsed as main.py's --config.a.b=v: the key's type decides, tuples as literals.
  config_lib.apply_override(config, "model.attention_resolutions=(8, 4)")
  config_lib.apply_override(config, "training.learning_rate=3")
  config_lib.apply_override(config, "data.hflip=false")
  assert config.model.attention_resolutions == (8, 4) and config.data.hflip is False
  assert config.training.learning_rate == 3.0 and config.is_locked
  for bad, needle in [("training.nope=1", "unknown config key 'training.nope'"),
                      ("nosection.x=1", "no config section 'nosection'"),
                      ("data.hflip=maybe", "not a valid bool"),
                      ("seed", "expected key=value"),
      ("training.num_steps=7.5", "'7.5' is not a valid int for training.num_steps")]:
    with pytest.raises(config_lib.ConfigError, match=re.escape(needle)) as e:
      config_lib.apply_override(config, bad)
    assert "\n" not in str(e.value)
