"""Entry point of the Celery processes: ``celery -A workers.celery_app ...``.

The module only calls the factory; everything else lives in workers.app.
"""

from workers.app import create_celery

app = create_celery()
