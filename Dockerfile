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

# Unprivileged user that runs every process.  Two writable places: beat keeps
# its schedule file in /var/lib/celery-beat, and gunicorn its socket (WEB_BIND)
# in /run/payment, which the nginx proxy reads (named volumes in
# docker-compose.yml, which take this ownership when they are first created).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0750 /var/lib/celery-beat \
    && install -d -o app -g app -m 0755 /run/payment

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

# Flower (FLOWER_PORT); the API listens on WEB_BIND, for the proxy only.
EXPOSE 5555

CMD ["gunicorn", "--config", "python:web.gunicorn_conf", "web.wsgi:app"]
