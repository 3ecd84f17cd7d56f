"""Performance benchmarks: ``python -m benchmarks.run --preset cpu|gpu [--only NAME] [--smoke]``.

Each benchmark module has ``run(preset, smoke) -> dict``; ``run.py`` prints its table and writes
``benchmarks/out/<name>.json``. Results and their reading live in BENCHMARKS.md.
"""
