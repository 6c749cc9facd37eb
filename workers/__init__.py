"""Celery workers, their tasks, and the Kafka refund bridge."""
