"""The steps a row's job takes in the workers: dispatch to a submit queue, submit, poll (or webhook),
store, complete; and the sweeper that re-drives lost steps.
"""
