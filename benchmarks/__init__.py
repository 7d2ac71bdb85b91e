"""proxopt's benchmark suite: ``python -m benchmarks`` (``--help`` for the flags).

Modules: :mod:`benchmarks.problems` (data and budgets), :mod:`benchmarks.models`
(models and the STE-in-the-model baseline), :mod:`benchmarks.train` (training
runs), :mod:`benchmarks.speed` (step / iteration / forward timings and
memory), :mod:`benchmarks.report` (tables, targets, Markdown and plots) and
:mod:`benchmarks.__main__` (the command line).
"""
