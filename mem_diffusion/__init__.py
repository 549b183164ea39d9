"""mem-diffusion: when do diffusion models memorize, and when do they generalize?

Importing the package (or any module of it) changes no environment variable,
starts no JAX backend and picks no matplotlib backend. Process-wide settings
belong to the entry points, which apply them visibly before JAX starts
(mem_diffusion/run/cpu_tuning.py, mem_diffusion/run/runtime.py) and record
them with the run (mem_diffusion/run/environment.py).

The package is imported without TensorFlow; only `mem_diffusion.data` needs it.
"""
