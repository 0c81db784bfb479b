"""Benchmarks: commands that print figures (never timed tests).

`python -m bench [cold|latency|jobs|connections|counts|all]`.
"""
