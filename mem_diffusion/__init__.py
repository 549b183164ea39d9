"""mem-diffusion: when do diffusion models memorize, and when do they generalize?

The package is imported without TensorFlow; only `mem_diffusion.data` needs it.
"""
