"""The benchmark of issue 6: kontext-batch driven at the API's active-task cap, beside two baselines.

Run ``python benchmarks/run.py`` (``--quick`` for a smoke version); see ``benchmarks/README.md``.
"""
