# image-dedup: one image for every service (watcher, hasher, matcher, actuator) and the daemon.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install . \
 && useradd --uid 1000 --create-home dedup \
 && mkdir -p /data /photos && chown dedup /data

# Defaults for containers; override with IMAGE_DEDUP_* or a mounted config file. The metrics
# listen on every address of the container (Prometheus, the probes); outside one, on 127.0.0.1.
ENV IMAGE_DEDUP_SOURCE_DIRECTORIES='["/photos"]' \
    IMAGE_DEDUP_STORE_PATH=/data/store.sqlite \
    IMAGE_DEDUP_JOURNAL_DIRECTORY=/data/journals \
    IMAGE_DEDUP_METRICS_PORT=9100 \
    IMAGE_DEDUP_METRICS_HOST=0.0.0.0
USER 1000
EXPOSE 9100
ENTRYPOINT ["image-dedup"]
CMD ["daemon"]
