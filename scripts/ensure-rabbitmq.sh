#!/usr/bin/env bash
# Make sure a RabbitMQ broker listens on 127.0.0.1:5672 (guest/guest): start it, or install
# Debian's rabbitmq-server first when it is missing. Needs root for the install.
set -euo pipefail

listening() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

listening && exit 0
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "installing rabbitmq-server (Debian package)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q rabbitmq-server
fi
rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 60); do
  listening && exit 0
  sleep 1
done
echo "RabbitMQ did not start on 127.0.0.1:5672" >&2
exit 1
