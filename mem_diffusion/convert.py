"""`python -m mem_diffusion.convert`: the command of mem_diffusion/port/convert.py, under its documented name."""

import runpy

if __name__ == "__main__":
  runpy.run_module("mem_diffusion.port.convert", run_name="__main__", alter_sys=True)
