"""Benchmarks of recsys-spark: quality on public datasets, feature groups and cold start, scoring
speed, incremental nights, the pure-torch part on a GPU. Not part of the product package (the
wheel ships recsys_spark only); run from the repository root, e.g. `python -m benchmarks.quality`.
"""
