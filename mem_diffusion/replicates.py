"""`python -m mem_diffusion.replicates`: the command of mem_diffusion/analysis/replicates.py, under its documented name."""

import runpy

if __name__ == "__main__":
  runpy.run_module("mem_diffusion.analysis.replicates", run_name="__main__", alter_sys=True)
