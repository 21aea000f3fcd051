"""Coordination in Redis: every key the system keeps, the slot gate and fenced job records, worker
heartbeats, delays, run records, budgets and the submit rate limit.
"""
