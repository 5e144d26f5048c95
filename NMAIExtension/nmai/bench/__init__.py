"""Benchmarks run by ``nmai bench TARGET``: one module per target with ``run(progress, quick=False) -> dict``."""
