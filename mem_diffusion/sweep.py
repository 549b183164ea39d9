"""`python -m mem_diffusion.sweep`: the command of mem_diffusion/experiments/sweep.py, under its documented name."""

import runpy

import mem_diffusion.python_version  # pylint: disable=unused-import  # first: one error line on an old Python

if __name__ == "__main__":
  runpy.run_module("mem_diffusion.experiments.sweep", run_name="__main__", alter_sys=True)
