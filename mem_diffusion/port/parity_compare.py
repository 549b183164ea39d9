"""How parity compares one array with the reference's: tolerances and gains.

The rules are those of `python -m mem_diffusion.parity` (its docstring lists
them); they live here so the checker itself stays about reading files and
rebuilding the model and diffusion from them.
"""

import dataclasses
from typing import Optional

import numpy as np

SCHEDULE_TOL = (1e-12, 1e-5)  # (abs, rel)
FLOAT32_TOL = (1e-4, 1e-3)


@dataclasses.dataclass
class Result:
  name: str
  max_abs: float
  max_rel: float
  ok: bool
  note: str = ""


def compare(name: str, got, want, tol=None, gain=None) -> Result:
  """Elementwise comparison; integer arrays must match exactly.

  gain: optional per-example factor (N,) >= 1 on the absolute tolerance, for
  arrays that amplify the network's rounding-level differences (see
  `eps_gain`). Elements that pass only thanks to it are counted in the note.
  """
  got = np.asarray(got)
  want = np.asarray(want)
  if got.shape != want.shape:
    return Result(name, float("nan"), float("nan"), False,
                  f"shape {got.shape} != reference {want.shape}")
  if np.issubdtype(want.dtype, np.integer):
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    max_abs = float(diff.max()) if diff.size else 0.0
    return Result(name, max_abs, max_abs, bool(max_abs == 0))
  if tol is None:
    tol = SCHEDULE_TOL if want.dtype == np.float64 else FLOAT32_TOL
  atol, rtol = tol
  got64 = got.astype(np.float64)
  want64 = want.astype(np.float64)
  diff = np.abs(got64 - want64)
  scale = np.abs(want64)
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), np.where(diff > 0, np.inf, 0.0))
  finite = np.isfinite(got64) == np.isfinite(want64)
  same_inf = np.where(np.isinf(want64), got64 == want64, True)
  diff = np.where(np.isinf(want64) & same_inf, 0.0, diff)
  rel = np.where(np.isinf(want64) & same_inf, 0.0, rel)
  plain_ok = (diff <= atol) | (rel <= rtol)
  ok_elem = plain_ok
  note = ""
  if gain is not None:
    g = np.maximum(np.asarray(gain, np.float64), 1.0).reshape((-1,) + (1,) * (want.ndim - 1))
    ok_elem = plain_ok | (diff <= atol * g)
    n_cond = int(np.sum(ok_elem & ~plain_ok))
    if n_cond:
      note = (f"{n_cond} element(s) beyond abs {atol:g}/rel {rtol:g}, within abs {atol:g} x "
              f"conditioning gain (max gain {float(g.max()):.3g})")
  ok = bool(np.all(ok_elem & finite & same_inf))
  max_abs = float(np.nanmax(diff)) if diff.size else 0.0
  max_rel = float(np.nanmax(rel)) if rel.size else 0.0
  return Result(name, max_abs, max_rel, ok, note)


def eps_gain(diffusion, name: str, t) -> Optional[np.ndarray]:
  """Per-example factor by which a difference in the network output can grow.

  pred_xstart = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps: near t = T-1 the
  cosine schedule's abar is ~1.5e-10, so a float32 rounding-level difference
  of 1e-7 in eps (the two implementations never agree closer) becomes ~1e-2
  in pred_xstart, in the reference itself too. The absolute tolerance of the
  arrays computed from the network output is multiplied by the derivative of
  the array with respect to that output (>= 1), unclipped, so a check stays
  as strict as the reference's own float32 arithmetic allows.
  """
  t = np.asarray(t)
  b = diffusion.sqrt_recipm1_alphas_cumprod[t]
  xstart_model = diffusion.mean_type == "xstart"
  d_x0 = np.ones_like(b) if xstart_model else b  # d pred_xstart / d output
  if name == "pred_xstart":
    return d_x0
  if name == "mean":
    return diffusion.posterior_mean_coef1[t] * d_x0
  if name == "ddim":
    abar_prev = diffusion.alphas_cumprod_prev[t]
    # x0 sqrt(abar_prev) + sqrt(1 - abar_prev) (A x_t - x0) / B
    return np.abs(np.sqrt(abar_prev) - np.sqrt(1 - abar_prev) / b) * d_x0
  return None
