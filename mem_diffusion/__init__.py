"""mem-diffusion: when do diffusion models memorize, and when do they generalize?

The package is imported without TensorFlow; only `mem_diffusion.data` needs it.

TensorFlow reads its logging and oneDNN switches from the environment once, at
its own import, and on CPUs with AVX-512 it announces from C++ that "oneDNN
custom operations are on" (TF_CPP_MIN_LOG_LEVEL does not silence that line).
Setting both here, before any module of this package can import TensorFlow,
keeps that chatter away from users and from tests that read stderr. TensorFlow
only gathers and converts uint8 images here, so its oneDNN math switch cannot
change a result. A value the user exported wins.
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# XLA:CPU defaults measured to be faster here (mem_diffusion/cpu_flags.py);
# they must be in XLA_FLAGS before JAX starts its first backend.
from mem_diffusion import cpu_flags as _cpu_flags  # pylint: disable=g-import-not-at-top

_cpu_flags.apply()
