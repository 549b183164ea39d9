"""The quickstart: memorization on a laptop CPU in a few minutes, no download.

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart --mode=all

trains the toy IDDPM UNet of configs/toy_capacity.py on 16 procedural
Mondrian images (8x8), samples from its EMA weights and evaluates them:
`runs/quickstart/eval/report.json` holds the replicate ratio (most samples
are copies of a training image) and `eval/nearest_neighbors.png` shows each
sample next to its two nearest training images. It is the N = 16 point of
the toy capacity curve in docs/results.md, with more samples.

Arguments: 'tiny' (fewer steps and samples, for tests); 'bf16' (bfloat16
compute, docs/training.md "Precision"); e.g. `configs/quickstart.py:tiny,bf16`.
"""

from configs import _common
from configs import toy_capacity


@_common.precision_arg
def get_config(arg: str = ""):
  tiny, _ = _common.parse_arg(arg, "configs/quickstart.py")
  config = _common.build("quickstart", False, dataset="mondrian", num_original=16)
  config = toy_capacity.apply_toy(config, tiny=tiny)
  if not tiny:
    config.sampling.num_samples = 256
  return config
