"""Experiment configs: `get_config(arg)` per file, all built on default.py."""
