"""The side-by-side benchmark suite: ttlpool, the wool pool it replaces, a floor.

Run it with ``python -m benchmarks`` (``--quick`` for about a minute,
``--smoke`` for a few seconds of meaningless numbers that prove it runs).
Every figure is measured in this one process (the memory figures in child
processes), the implementations taking turns repetition by repetition, and
reported as the median with min..max over repetitions and the median of the
same-repetition ratios to ttlpool. See ``python -m benchmarks --help``.
"""
