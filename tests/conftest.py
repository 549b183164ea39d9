"""Test-wide setup: several fake CPU devices, so sharding code runs as on a pod.

The device count must be fixed before JAX initialises its backend, which is why
it is set here, at import time of the first conftest.
"""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
