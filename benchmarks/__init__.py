"""Benchmarks: same-run ratios, every round kept in the JSON under ``benchmarks/results/``.

Run them as modules from the repository root, so that they import each other as a package
and the library from the checkout:

    python -m benchmarks.projection --out benchmarks/results/projection.json
    python -m benchmarks.step --out benchmarks/results/step.json
    python -m benchmarks.gradient --out benchmarks/results/gradient.json
    bash benchmarks/gpu.sh

Helpers that the tests share with the benchmarks live in installed packages
(``narset_jax.testing``, ``sims.numpy_twin``), never here.
"""
