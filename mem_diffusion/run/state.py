"""The training state and what is needed to make or restore one.

Kept apart from the train step so that code which only reads checkpoints
(sampling) learns the state's structure without building or compiling the
optimizer's step: restoring needs only the abstract state (shapes, dtypes,
shardings), and that comes from tracing the initialiser.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mem_diffusion.run import checkpoint as checkpoint_lib
from mem_diffusion.run import parallel
from mem_diffusion import config as validate
from mem_diffusion import config_guard
from mem_diffusion.diffusion import diffusion_from_config
from mem_diffusion.diffusion import timestep_samplers
from mem_diffusion.models import unet_from_config

# fold_in tags of the run's root key: one independent stream per purpose.
INIT, TRAIN, GRID = 0, 1, 2


@flax.struct.dataclass
class TrainState:
  params: Any
  ema_params: Any
  opt_state: Any
  step: jax.Array  # int32 scalar: number of completed optimizer steps
  rng: jax.Array  # uint32[2] raw key; per-step keys are fold_in(rng, step)
  sampler_state: Any  # timestep sampler state (empty for uniform)


class Parts(NamedTuple):
  """The objects a state (and a train step) is made from; no compiled code."""
  model: Any
  diffusion: Any
  tx: optax.GradientTransformation
  sampler: Any
  init_fn: Callable[[jax.Array], TrainState]


def make_optimizer(training_cfg: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """Adam as in IDDPM (no warm-up, no clipping); AdamW only with weight decay."""
  lr = training_cfg.learning_rate
  if training_cfg.weight_decay > 0:
    return optax.adamw(lr, weight_decay=training_cfg.weight_decay)
  return optax.adam(lr)


def pack_sampler_state(sampler_state):
  # Orbax refuses zero-size arrays, which is how the uniform sampler's
  # (unused) state looks: store an empty dict instead.
  if all(np.size(x) == 0 for x in jax.tree.leaves(sampler_state)):
    return {}
  return sampler_state


def unpack_sampler_state(packed, sampler):
  return sampler.init() if isinstance(packed, dict) and not packed else packed


def make_init_fn(model, tx, sampler, config) -> Callable[[jax.Array], TrainState]:
  """key -> initial TrainState (jit it with replicated out_shardings)."""
  size = config.data.image_size
  conditional = bool(config.model.num_classes)

  def init(key):
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if conditional else None
    params = model.init({"params": jax.random.fold_in(key, INIT)}, x, t, y,
                        train=False)["params"]
    return TrainState(
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.fold_in(key, TRAIN),
        sampler_state=pack_sampler_state(sampler.init()))
  return init


def config_key(config: ml_collections.ConfigDict) -> tuple:
  """What the state and the compiled step depend on: the config minus the
  keys that are safe to change on resume."""
  flat = validate.flatten(config)
  return tuple(sorted((k, repr(v)) for k, v in flat.items()
                      if not config_guard.is_safe_change(k)))


class BoundedCache:
  """The `size` most recently used values by key; older ones are dropped.

  For objects that hold compiled programs: a notebook or an in-process sweep
  goes through many configs, and an unbounded cache would keep every one's
  executables alive. Rebuilding a dropped entry costs a compile (or a load
  from the persistent compilation cache).
  """

  def __init__(self, size: int):
    self.size = size
    self._items: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()

  def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
    if key in self._items:
      self._items.move_to_end(key)
      return self._items[key]
    value = self._items[key] = make()
    while len(self._items) > self.size:
      self._items.popitem(last=False)
    return value

  def __len__(self) -> int:
    return len(self._items)

  def clear(self) -> None:
    self._items.clear()


_PARTS = BoundedCache(4)


def _make_parts(config: ml_collections.ConfigDict) -> Parts:
  model = unet_from_config(config.model, config.data.image_size)
  diffusion = diffusion_from_config(config.diffusion, config.model.learn_sigma)
  tx = make_optimizer(config.training)
  sampler = timestep_samplers.create(config.diffusion.timestep_sampler,
                                     diffusion.num_timesteps)
  return Parts(model, diffusion, tx, sampler, make_init_fn(model, tx, sampler, config))


def parts(config: ml_collections.ConfigDict) -> Parts:
  """Model, diffusion, optimizer, timestep sampler and init fn of a config.

  Cached per config_key (a few configs), so that every caller in one process
  gets the same objects and jax's caches, keyed on them, hit.
  """
  return _PARTS.get(config_key(config), lambda: _make_parts(config))


_INITIAL = BoundedCache(2)


def initial_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                  ) -> TrainState:
  """The step-0 state, replicated over the mesh.

  On CPU the initialiser is compiled at LLVM optimisation level 0: it runs
  once, and the ~100 random-number kernels of a UNet's initialisers otherwise
  take several times longer to compile than to run. The values are a pure
  function of (config, seed) either way (the option is always the same).
  """
  def compile_init():
    init_fn, seed = parts(config).init_fn, config.seed
    fn = jax.jit(lambda: init_fn(jax.random.PRNGKey(seed)),
                 out_shardings=parallel.replicated(mesh))
    options = ({"xla_backend_optimization_level": 0}
               if jax.default_backend() == "cpu" else None)
    return fn.lower().compile(compiler_options=options)

  key = (config_key(config), config.seed, tuple(d.id for d in mesh.devices.flat))
  return _INITIAL.get(key, compile_init)()


def abstract_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                   ) -> TrainState:
  """Shapes, dtypes and replicated shardings of the state: a restore target.

  Traced, not compiled: costs one abstract evaluation of the initialiser.
  """
  shapes = jax.eval_shape(parts(config).init_fn, jax.random.PRNGKey(config.seed))
  return checkpoint_lib.abstract_like(shapes, parallel.replicated(mesh))
