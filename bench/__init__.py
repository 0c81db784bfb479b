"""Benchmarks: commands that print figures (never timed tests). `python -m bench [cold|counts|all]`."""
