"""Celery tasks: thin adapters that call :mod:`kontext_batch.steps.pipeline` with the process runtime."""
