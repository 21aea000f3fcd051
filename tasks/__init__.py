"""Celery tasks: thin adapters that call the steps in :mod:`kontext_batch.steps` with the process runtime."""
