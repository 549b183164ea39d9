"""`python -m mem_diffusion.chains`: the command of mem_diffusion/experiments/chains.py, under its documented name."""

import runpy

if __name__ == "__main__":
  runpy.run_module("mem_diffusion.experiments.chains", run_name="__main__", alter_sys=True)
