"""IDDPM training: the jitted data-parallel step and the loop.

The loop is built so that a run's result depends only on (config, step):
- every random key is fold_in(fold_in(seed, TRAIN), step) (then a tag), never
  a device or process index, so 1 and 8 devices draw the same numbers (JAX's
  partitionable threefry generates a global array independently of sharding);
- the input pipeline is a pure function of the step (mem_diffusion.data);
- the TrainState (mem_diffusion.run.state) holds everything else, including the
  importance sampler;
so resuming from a checkpoint reproduces an uninterrupted run bit for bit.

The terminal gets one compact progress line per ~5% of the run
(mem_diffusion.run.progress); every metric goes to TensorBoard.

TensorFlow (pulled in by the data modules and clu's TensorBoard writer) is
imported lazily, inside train_and_evaluate, never at import time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mem_diffusion.run import checkpoint as checkpoint_lib
from mem_diffusion.run import environment
from mem_diffusion import data
from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.run import metrics as metrics_lib
from mem_diffusion.run import micro_batches
from mem_diffusion.run import over_training
from mem_diffusion.run import parallel
from mem_diffusion.run import progress as progress_lib
from mem_diffusion.run import records
from mem_diffusion import report
from mem_diffusion.run import sampling
from mem_diffusion.run import signals as signals_lib
from mem_diffusion.run import state as state_lib
from mem_diffusion import config as validate
from mem_diffusion.run.workdir import Workdir

# fold_in tags of a step's key: one independent stream per purpose.
_T_TAG, _NOISE_TAG, _DROPOUT_TAG = 0, 1, 2


TrainingDivergedError = errors.TrainingDivergedError  # re-exported for callers
Preempted = errors.Preempted


def make_train_step(model, diffusion, tx, sampler, config,
                    mesh: jax.sharding.Mesh, accum: int | None = None):
  """The step (state, batch) -> (state, metrics); the state is donated.

  The batch arrives sharded over 'data'; params are replicated; XLA inserts
  the gradient all-reduce. With A micro-batches (`accum`, by default
  training.micro_batches) the batch is split by striding (rows i, i+A, ...),
  so each device keeps its own rows, and the gradients are averaged. A = 1
  is one jitted program; A > 1 is a micro_batches.MicroBatchedStep, the same
  on every platform (mem_diffusion/run/micro_batches.py says why).
  """
  conditional = bool(config.model.num_classes)
  if accum is None:
    accum = config.training.micro_batches
  decay = config.training.ema_decay
  loss_scale = float(config.training.get("loss_scale", 1.0))
  num_t = diffusion.num_timesteps
  rep = parallel.replicated(mesh)
  batch_sharding = parallel.batch_sharded(mesh)
  micro_spec = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, parallel.DATA_AXIS))

  def loss_fn(params, x0, y, t, weights, noise, dropout_key):
    def model_fn(x, t_model):
      return model.apply({"params": params}, x, t_model, y, train=True,
                         rngs={"dropout": dropout_key})
    losses = diffusion.training_losses(model_fn, x0, t, noise)
    return loss_scale * jnp.mean(weights * losses["loss"]), losses

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def split(x):  # (B, ...) -> (A, B/A, ...), micro-batch i = rows i::A
    x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, micro_spec)

  def merge(x):  # inverse of split
    return x.swapaxes(0, 1).reshape((-1,) + x.shape[2:])

  def inputs(state: state_lib.TrainState, batch):
    """Everything a step draws, for the whole batch: (x0, y, t, weights,
    noise, dropout_key) and the unpacked sampler state."""
    x0 = batch["image"].astype(jnp.float32)
    y = batch["label"].astype(jnp.int32) if conditional else None
    key = jax.random.fold_in(state.rng, state.step)
    sampler_state = state_lib.unpack_sampler_state(state.sampler_state, sampler)
    t, weights = sampler.sample(sampler_state,
                                jax.random.fold_in(key, _T_TAG), x0.shape[0])
    noise = jax.random.normal(jax.random.fold_in(key, _NOISE_TAG), x0.shape,
                              jnp.float32)
    dropout_key = jax.random.fold_in(key, _DROPOUT_TAG)
    return (x0, y, t, weights, noise, dropout_key), sampler_state

  def micro_inputs(drawn, i):
    """Micro-batch i's slice of `drawn` (i may be traced)."""
    *arrays, dropout_key = drawn
    return (*[None if a is None else split(a)[i] for a in arrays],
            jax.random.fold_in(dropout_key, i))

  def finish(state, grads, losses, t, weights, sampler_state):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
    sampler_state = state_lib.pack_sampler_state(
        sampler.update(sampler_state, t, losses["loss"]))
    stats = metrics_lib.step_statistics(
        t, num_t, {k: weights * losses[k] for k in metrics_lib.TERMS})
    stats["grad_norm"] = optax.global_norm(grads)
    new_state = state.replace(params=params, ema_params=ema,
                              opt_state=opt_state, step=state.step + 1,
                              sampler_state=sampler_state)
    return new_state, stats

  if accum > 1:
    return micro_batches.build(grad_fn, inputs, micro_inputs, finish, merge, accum,
                               rep, batch_sharding)

  def step(state: state_lib.TrainState, batch):
    drawn, sampler_state = inputs(state, batch)
    (_, losses), grads = grad_fn(state.params, *drawn)
    return finish(state, grads, losses, drawn[2], drawn[3], sampler_state)

  return jax.jit(step, in_shardings=(rep, batch_sharding),
                 out_shardings=(rep, rep), donate_argnums=0)


_BUILD_CACHE = state_lib.BoundedCache(2)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(model, diffusion, tx, sampler, init_fn, train_step) for a config.

  The first five are state.parts(config); the step is cached per (config
  minus safe keys, mesh) for the two most recent configs, so that repeated
  runs in one process (a resume, the tests) reuse the compiled step without
  an in-process sweep keeping every config's. Code that only restores a
  state needs state.abstract_state, not this.
  """
  def make():
    parts = state_lib.parts(config)
    return (*parts, make_train_step(parts.model, parts.diffusion, parts.tx,
                                    parts.sampler, config, mesh))

  key = (state_lib.config_key(config), tuple(d.id for d in mesh.devices.flat))
  return _BUILD_CACHE.get(key, make)


def _write_grid(images: np.ndarray, path: str, writer, step: int) -> None:
  grid = report.image_grid(images)
  report.save_png(path, grid)
  writer.write_images(step, {"samples": grid[None]})


def _write_config(config, workdir: str, facts: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    files.write_json(Workdir(workdir).config_json,
                     {**config.to_dict(), environment.RECORD_KEY: facts,
                      **records.marker_entry(workdir)})


def _over_training_watcher(config, workdir: str, mesh, train_set, start: int):
  """The memorization-over-training scorer, or None when eval.every_steps is 0."""
  if not over_training.enabled(config):
    return None
  n = min(config.eval.num_heldout, data.heldout_available(config.data))
  heldout = data.heldout_images(config.data, n) if n >= 4 else None
  return over_training.Watcher(config, workdir, mesh, train_set.images, heldout,
                               start_step=start)


def _metric_writer(workdir: str):
  """TensorBoard on process 0, nothing elsewhere.

  Not clu's default writer: that one also logs every scalar through absl,
  which is what the progress lines replace on the terminal.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  # TensorFlow
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter(
      [metric_writers.SummaryWriter(Workdir(workdir).tensorboard)])


def _summary(state: state_lib.TrainState, meta: dict[str, Any], mesh, *,
             images_per_second: float | None, config) -> dict[str, Any]:
  params, ema = parallel.fetch((state.params, state.ema_params))
  return {
      "name": config.name,
      "step": int(parallel.fetch(state.step)),
      "final_loss": meta.get("last_loss"),
      "params_sha256": metrics_lib.tree_sha256(params),
      "ema_sha256": metrics_lib.tree_sha256(ema),
      "params_l2_norm": metrics_lib.tree_l2_norm(params),
      "ema_l2_norm": metrics_lib.tree_l2_norm(ema),
      "num_params": int(sum(np.size(p) for p in jax.tree.leaves(params))),
      "num_devices": int(mesh.devices.size),
      "num_processes": jax.process_count(),
      "images_per_second": images_per_second,
      "wall_seconds": meta.get("wall_seconds"),
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, Any]:
  """Trains to config.training.num_steps, resuming from the latest checkpoint.

  Returns the train summary (also written to <workdir>/train_summary.json).
  The caller (stages.run) has validated the config and checked it against
  the workdir's record. Raises ConfigError when the batch does not split over
  the devices, TrainingDivergedError on NaN/inf, Preempted on SIGTERM/SIGINT
  (after saving the current step), and checkpoint.CheckpointCorruptError
  when checkpoints exist but none restores.
  """
  session_start = time.time()
  mesh = parallel.data_mesh()
  validate.check_devices(config, mesh.devices.size)
  workdir = os.path.abspath(workdir)

  # Data errors (e.g. CIFAR-10 not prepared) surface here, before any compute
  # and before the workdir is claimed by a config.json.
  train_set = data.build_train_set(config.data)
  os.makedirs(workdir, exist_ok=True)
  facts = environment.facts(mesh.devices.flat, micro_batches=config.training.micro_batches)
  _write_config(config, workdir, facts)
  if jax.process_index() == 0:
    data.write_manifest(train_set, Workdir(workdir).train_manifest, config.data)

  train_step = build(config, mesh)[-1]
  tcfg = config.training
  num_steps = tcfg.num_steps
  ckpt_dir = Workdir(workdir).checkpoints
  writer = _metric_writer(workdir)
  progress = progress_lib.Progress(
      num_steps, label="train", unit="step", items_per_unit=tcfg.batch_size,
      enabled=jax.process_index() == 0)

  with checkpoint_lib.Checkpointer(ckpt_dir, keep=tcfg.keep_checkpoints) as ckpt:
    # The newest intact checkpoint; broken newer ones are moved aside with a
    # warning, and a directory of only broken ones stops the run.
    restored = ckpt.restore_latest(state_lib.abstract_state(config, mesh))
    if restored is not None:
      _, state, meta = restored
    else:
      state, meta = state_lib.initial_state(config, mesh), {}
    start = int(parallel.fetch(state.step))
    if start > num_steps:  # a longer run's model must not answer for a shorter config
      raise errors.ConfigError(records.past_message(num_steps, start, ckpt_dir))
    summary_path = Workdir(workdir).train_summary
    if start >= num_steps and os.path.exists(summary_path):
      with open(summary_path) as f:
        summary = json.load(f)
      if summary.get("step") == start:
        progress.say(f"already complete at step {start} ({summary_path})")
        writer.close()
        return summary
    prior_wall = float(meta.get("wall_seconds") or 0.0)
    if start == 0 and tcfg.num_steps > 0:
      writer.write_hparams({k: (str(v) if isinstance(v, (list, tuple)) else v)
                            for k, v in validate.flatten(config).items()})

    origin = (f"resumed at step {start} from {ckpt_dir}" if restored is not None
              else "starting at step 0")
    accum = tcfg.micro_batches
    split_text = (f" as {accum} micro-batches of {tcfg.batch_size // accum}"
                  if accum > 1 else "")
    progress.say(f"{origin}; training to step {num_steps}, {tcfg.batch_size} "
                 f"images per step{split_text} on "
                 f"{progress_lib.devices_text(mesh.devices.size)} (the first step compiles)")
    grid_fn = sampling.preview_sampler(config, mesh) if tcfg.sample_grid_every else None
    watcher = _over_training_watcher(config, workdir, mesh, train_set, start)
    if watcher is not None and restored is not None and watcher.due(start):
      # A kill between the checkpoint and its point: score the restored params.
      point = watcher(start, state.ema_params, writer)
      progress.say(f"step {start}: replicate ratio {point['replicate_ratio']:.3f} "
                   f"({point['num_samples']} samples; recomputed on resume)")
    run_id = records.run_id(Workdir(workdir))
    grid_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), state_lib.GRID)
    dataset = data.make_dataset(
        train_set, config.data, global_batch_size=tcfg.batch_size,
        seed=config.seed, start_step=start, num_steps=max(num_steps - start, 0),
        process_index=jax.process_index(), process_count=jax.process_count())
    window = metrics_lib.Window()
    last_loss = meta.get("last_loss")
    step = start
    timing_start, timing_step = None, start  # excludes the first (compiling) step
    last_log_time, last_log_step = time.time(), start

    def meta_now():
      return {"step": step, "last_loss": last_loss,
              "wall_seconds": prior_wall + time.time() - session_start}

    def flush_checked():
      nonlocal last_loss
      means, bad = window.flush()
      if bad is not None:
        good = ckpt.latest_step()
        raise TrainingDivergedError(
            f"non-finite loss or gradient at step {bad} (loss window mean "
            f"{means.get('loss')}); stopped without saving. The last good "
            f"checkpoint is step {good} in {ckpt_dir}"
            if good is not None else
            f"non-finite loss or gradient at step {bad}; no checkpoint saved")
      if means:
        last_loss = means["loss"]
      return means

    with signals_lib.SignalCatcher() as signals, progress:
      for batch in dataset:
        if step >= num_steps:
          break
        state, stats = train_step(state, parallel.to_global(batch, mesh))
        step += 1
        window.add(step, stats)
        if timing_start is None:
          jax.block_until_ready(stats)
          timing_start, timing_step = time.time(), step

        if step % tcfg.log_every == 0 or step == num_steps:
          means = flush_checked()
          now = time.time()
          rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
          last_log_time, last_log_step = now, step
          means.update(steps_per_second=rate,
                       images_per_second=rate * tcfg.batch_size,
                       eta_hours=(num_steps - step) / max(rate, 1e-9) / 3600)
          writer.write_scalars(step, means)
        if progress.due(step):  # the line's rate counts finished steps only
          jax.block_until_ready(stats)
        progress.update(step, loss=last_loss)
        save_now = step % tcfg.checkpoint_every == 0 or step == num_steps
        stop = signals.signum is not None
        if jax.process_count() > 1 and (save_now or step % 10 == 0):
          stop = parallel.any_process(stop)
        if save_now or stop:
          flush_checked()
          # The run id and EMA digest let sampling tell this run's checkpoint
          # from another's copied in, without restoring it (records.py).
          ckpt.save(step, state, {**meta_now(), "run_id": run_id, "ema_sha256":
                                  metrics_lib.tree_sha256(parallel.fetch(state.ema_params))})
        if stop:
          ckpt.wait()
          writer.flush()
          raise Preempted(step, signals.signum or signal.SIGTERM)
        if watcher is not None and watcher.due(step):
          flush_checked()
          point = watcher(step, state.ema_params, writer)
          progress.say(f"step {step}: replicate ratio {point['replicate_ratio']:.3f} "
                       f"({point['num_samples']} samples)")
        if grid_fn is not None and step % tcfg.sample_grid_every == 0:
          flush_checked()
          images = grid_fn(state.ema_params, grid_key)
          if jax.process_index() == 0:
            _write_grid(images, os.path.join(Workdir(workdir).train_grids,
                                             f"step_{step:08d}.png"), writer, step)

    ckpt.wait()
    images_per_second = None
    if timing_start is not None and step > timing_step:
      images_per_second = ((step - timing_step) * tcfg.batch_size /
                           (time.time() - timing_start))
    summary = _summary(state, meta_now(), mesh,
                       images_per_second=images_per_second, config=config)
    summary["resumed_from_step"] = start
    summary[environment.RECORD_KEY] = facts
    if jax.process_index() == 0:
      files.write_json(summary_path, summary)
    progress.say(f"done at step {summary['step']}; wrote {summary_path}")
  writer.close()
  return summary
