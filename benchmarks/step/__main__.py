"""``python -m benchmarks.step``: see [`benchmarks.step`][]."""

from benchmarks.step import main

main()
