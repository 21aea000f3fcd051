"""Worker wiring: the Celery app, its queues, and the per-process runtime."""
