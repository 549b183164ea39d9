"""The PyTorch reference of benchmarks/gpu_check.py, run as its child process.

  python benchmarks/torch_reference.py REFERENCE_DIR SETTINGS_JSON   # prints one JSON line

REFERENCE_DIR is an improved-diffusion checkout (the folder holding the
`improved_diffusion` package); SETTINGS_JSON carries the config, batch size
and repeat counts. A process of its own keeps PyTorch's CUDA libraries and
caching allocator apart from JAX's (two builds of CUDA and cuDNN loaded into
one process can clash), and torch out of gpu_check.py.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ml_collections
import torch

from timing import best_seconds  # benchmarks/ is sys.path[0] when run as a script

DTYPES = ("float32", "bfloat16")


def reference_rates(reference_dir: str, config, batch_size: int, *, repeats: int,
                    iters: int) -> dict:
  """The PyTorch reference (improved-diffusion's UNetModel and diffusion) on this config.

  Train step: hybrid loss at uniform t, backward, Adam, EMA; forward: the
  network in eval mode without gradients. bfloat16 is torch.autocast, which
  is what a PyTorch user reaches for (the reference's own fp16 mode needs its
  loss-scaling trainer).
  """
  sys.path.insert(0, os.path.abspath(reference_dir))
  # pylint: disable=g-import-not-at-top
  from improved_diffusion.script_util import create_gaussian_diffusion
  from improved_diffusion.unet import UNetModel
  # pylint: enable=g-import-not-at-top

  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  m, size, steps = config.model, config.data.image_size, config.diffusion.steps
  net = UNetModel(
      in_channels=3, model_channels=m.model_channels, out_channels=6 if m.learn_sigma else 3,
      num_res_blocks=m.num_res_blocks, dropout=m.dropout, channel_mult=tuple(m.channel_mult),
      # The reference names attention levels by downsampling rate, not resolution.
      attention_resolutions=tuple(size // r for r in m.attention_resolutions),
      conv_resample=m.conv_resample, num_classes=m.num_classes or None, num_heads=m.num_heads,
      use_scale_shift_norm=m.use_scale_shift_norm).to(dev)
  diffusion = create_gaussian_diffusion(
      steps=steps, learn_sigma=m.learn_sigma, noise_schedule=config.diffusion.schedule,
      rescale_timesteps=config.diffusion.rescale_timesteps, rescale_learned_sigmas=True)
  params = list(net.parameters())
  opt = torch.optim.Adam(params, lr=config.training.learning_rate)
  ema = [p.detach().clone() for p in params]
  torch.manual_seed(0)
  x = torch.rand((batch_size, 3, size, size), device=dev) * 2 - 1
  kwargs = {"y": torch.randint(0, 10, (batch_size,), device=dev)} if m.num_classes else {}
  t_scale = 1000.0 / steps if config.diffusion.rescale_timesteps else 1.0
  decay = config.training.ema_decay
  cuda = dev.type == "cuda"

  def sync(_):
    if cuda:
      torch.cuda.synchronize()

  out: dict[str, Any] = {
      "torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
      "num_params": int(sum(p.numel() for p in params)), "batch_size": batch_size,
      "allow_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                     "cudnn": torch.backends.cudnn.allow_tf32},
      "train": {}, "forward": {}}
  for dtype in DTYPES:
    def amp():
      return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def train_step():
      t = torch.randint(0, steps, (batch_size,), device=dev)
      with amp():
        loss = diffusion.training_losses(net, x, t, model_kwargs=kwargs)["loss"].mean()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      with torch.no_grad():  # one fused EMA update, as optax's over the whole tree
        torch._foreach_lerp_(ema, params, 1.0 - decay)  # pylint: disable=protected-access
      return loss

    def forward():
      t = torch.randint(0, steps, (batch_size,), device=dev)
      with torch.no_grad(), amp():
        return net(x, t.float() * t_scale, **kwargs)

    for kind, fn, n in (("train", train_step, iters), ("forward", forward, max(iters // 3, 1))):
      net.train(kind == "train")
      if cuda:
        torch.cuda.reset_peak_memory_stats()
      s = best_seconds(fn, sync, iters=n, repeats=repeats)
      out[kind][dtype] = {"seconds": s, "images_per_second": batch_size / s,
                          "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}
  return out


if __name__ == "__main__":
  reference_dir, settings = sys.argv[1], json.loads(sys.argv[2])
  print(json.dumps(reference_rates(
      reference_dir, ml_collections.ConfigDict(settings["config"]), settings["batch_size"],
      repeats=settings["repeats"], iters=settings["iters"])))
