# syntax=docker/dockerfile:1
#
# One image for every process of the payment service.  docker-compose.yml picks
# the process with `command:`; the default is the HTTP API.
#
#   api      gunicorn --config python:web.gunicorn_conf web.wsgi:app
#   topics   python -m workers.topics          (one-shot, creates the Kafka topics)
#   worker   celery -A workers.celery_app worker ...
#   beat     celery -A workers.celery_app beat ...
#   bridge   python -m workers.bridge
#   flower   python -m workers.flower
#
# All configuration comes from the environment (shared/settings.py); the image
# holds no secret and no .env file (see .dockerignore).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged user that runs every process.  /var/lib/celery-beat is the only
# writable place: beat keeps its schedule file there (a named volume in
# docker-compose.yml, which takes this ownership when it is first created).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0750 /var/lib/celery-beat

WORKDIR /app

# Dependencies first, so a code change does not reinstall them; constraints.txt
# pins the whole tree, so every build installs the same versions.
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY web/ web/
COPY workers/ workers/
COPY shared/ shared/
COPY celeryconfig.py ./

USER app

# API (PAYMENT_SERVICE_PORT) and Flower (FLOWER_PORT) defaults.
EXPOSE 8080 5555

CMD ["gunicorn", "--config", "python:web.gunicorn_conf", "web.wsgi:app"]
