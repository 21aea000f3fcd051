"""The steps a row's job takes in the workers: dispatch to a submit queue, submit, poll (or webhook),
store, complete; and the sweeper that re-drives lost steps. :mod:`~kontext_batch.steps.outcome` is
the line each step's task returns, so Flower shows what happened to the row.
"""
