"""A run as a whole, from the CLI's side: queue a manifest (:mod:`.enqueue`), look at it or follow it
(:mod:`.view`), stop or retry it (:mod:`.control`), or run everything on one machine (:mod:`.local`).
"""
