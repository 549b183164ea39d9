"""`python -m mem_diffusion.parity`: the command of mem_diffusion/port/parity.py, under its documented name."""

import runpy

if __name__ == "__main__":
  runpy.run_module("mem_diffusion.port.parity", run_name="__main__", alter_sys=True)
