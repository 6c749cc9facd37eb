"""Celery tasks, one module per domain; task names are public API."""
