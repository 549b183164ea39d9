"""`python -m mem_diffusion.capacity`: the command of mem_diffusion/experiments/capacity.py, under its documented name."""

import runpy

if __name__ == "__main__":
  runpy.run_module("mem_diffusion.experiments.capacity", run_name="__main__", alter_sys=True)
