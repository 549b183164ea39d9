"""One `error:` line, not a traceback, when the interpreter is too old.

The package needs Python >= 3.11 (pyproject.toml's requires-python), and a
stock TPU VM or Ubuntu 22.04 starts `python3` as 3.10. The entry points
(main.py, the sweep) import this module before anything else, so an old
Python stops here with what to do instead of failing somewhere inside a
library. Written for any Python 3: no f-strings, no annotations.
"""

import sys

MINIMUM = (3, 11)

if tuple(sys.version_info[:2]) < MINIMUM:
  sys.stderr.write(
      "error: mem-diffusion needs Python >= %d.%d; %s is Python %d.%d. Install 3.11 "
      "(e.g. sudo apt-get install python3.11 python3.11-venv, or uv python install 3.11) and "
      "make the virtual environment with it (README, \"On a GPU / TPU VM\")\n"
      % (MINIMUM + (sys.executable or "python", sys.version_info[0], sys.version_info[1])))
  sys.exit(2)
