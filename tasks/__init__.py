"""Celery tasks: thin adapters that call :mod:`kontext_batch.pipeline` with the process runtime."""
