"""Gaussian KL and the discretized Gaussian log-likelihood of 8-bit images.

These are the terms of the variational bound. The reference's numerical
choices are kept on purpose (the tanh approximation of the normal CDF, the
1e-12 floor before every log, the open edge bins at +-0.999) because the
bound, and so the learned variances, depend on them.
"""

import math

import jax.numpy as jnp

# Half the width of one of 256 bins of [-1, 1].
HALF_BIN = 1.0 / 255.0
# Images scaled from uint8 have their extreme values at exactly +-1; the edge
# bins extend to infinity. 0.999 separates them from the next bin (1 - 2/255).
EDGE = 0.999
LOG_FLOOR = 1e-12


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """The tanh approximation of Phi(x) used by the reference (not erf)."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log P(bin of x) under N(means, exp(log_scales)^2), elementwise, in nats.

  x must be uint8 images rescaled to [-1, 1]. Every probability is floored at
  1e-12 before the log (so a hopeless prediction costs at most ~27.6 nats per
  dimension rather than inf).
  """
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + HALF_BIN))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - HALF_BIN))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, LOG_FLOOR))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, LOG_FLOOR))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, LOG_FLOOR))
  return jnp.where(x < -EDGE, log_cdf_plus,
                   jnp.where(x > EDGE, log_one_minus_cdf_min, log_delta))


def mean_flat(x):
  """Mean over every axis but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))
