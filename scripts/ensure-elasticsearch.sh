#!/usr/bin/env bash
# Make sure a single-node Elasticsearch 8 answers on 127.0.0.1:${ES_PORT:-9200} (no security),
# for the tests and the benchmarks (a production node is deployed otherwise: docker-compose.yml,
# k8s/): build the launcher in scripts/elasticsearch from the Maven Central jars when it is not
# built, start it in the background and wait until the cluster is yellow. Says on stderr what it
# does. Installs Debian's JDK 17 and Maven first when they are missing (needs root for that).
#
# Its data folder is never wiped: a node started again (after a crash, or stopped by a fault
# test) comes back with the indexes it held; a first start, or an empty folder, makes a new node.
# ES_FRESH=1 asks for an empty node, and is refused (exit 1) when the folder holds any index.
#
# Environment: ES_PORT (9200), ES_TRANSPORT_PORT (9300-9399), ES_JAVA_OPTS (-Xms1g -Xmx1g),
# ES_STATE_DIR (where the log, pid and data go; default ${TMPDIR:-/tmp}/image-dedup-es-$ES_PORT),
# ES_START_TIMEOUT (seconds, 180), ES_FRESH. Maven uses its usual local repository (~/.m2), kept
# across runs.
set -euo pipefail

port="${ES_PORT:-9200}"
module="$(cd "$(dirname "$0")/elasticsearch" && pwd)"
state="${ES_STATE_DIR:-${TMPDIR:-/tmp}/image-dedup-es-$port}"
log="$state/elasticsearch.log"
timeout="${ES_START_TIMEOUT:-180}"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

# HTTP status of GET $1 on the node, or nothing; bash only, so curl is not needed.
http_status() (
  line=""
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 0
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$1" >&3
  IFS= read -r -t 10 line <&3 || true
  exec 3<&- 3>&-
  line="${line#* }"
  printf '%s' "${line%% *}"
)

yellow() { [ "$(http_status '/_cluster/health?wait_for_status=yellow&timeout=1s')" = 200 ]; }

wait_yellow() { # $1: seconds, $2: pid to watch (optional)
  local deadline=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$deadline" ]; do
    yellow && return 0
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
      echo "Elasticsearch exited while starting" >&2
      return 1
    fi
    sleep 1
  done
  return 1
}

mkdir -p "$state"
# One start at a time, e.g. two test runs at once.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$state/lock"
  flock 9
fi

if listening; then
  if wait_yellow 60; then
    echo "Elasticsearch already answers on 127.0.0.1:$port (nothing done)" >&2
    exit 0
  fi
  echo "something listens on 127.0.0.1:$port but its cluster health is not yellow" >&2
  exit 1
fi

if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  echo "installing a JDK and Maven (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q openjdk-17-jdk-headless maven
fi

jar="$module/target/es-launcher-1.jar"
stamp="$module/target/lib/.complete"
if [ ! -f "$jar" ] || [ ! -f "$stamp" ] \
  || [ -n "$(find "$module/pom.xml" "$module/src" -newer "$stamp" -print -quit)" ]; then
  echo "building the Elasticsearch launcher (Maven)" >&2
  (cd "$module" && mvn -q -B -Dstyle.color=never package) >&2
  touch "$stamp"
fi

home="$state/home"
# An index has a folder below data/indices (8.x: data/indices/<uuid>); a node without one holds nothing.
holds_data() { [ -n "$(find "$home/data" -mindepth 2 -maxdepth 2 -path '*/indices/*' -print -quit 2>/dev/null)" ]; }
if [ "${ES_FRESH:-0}" = 1 ]; then
  if holds_data; then
    echo "ES_FRESH=1 refused: $home/data holds indexes; remove that folder yourself if they may go" >&2
    exit 1
  fi
  echo "starting a new, empty Elasticsearch node on 127.0.0.1:$port (ES_FRESH=1), data in $home/data" >&2
elif holds_data; then
  echo "starting Elasticsearch on 127.0.0.1:$port with the indexes it held, data in $home/data (kept)" >&2
else
  echo "starting a new Elasticsearch node on 127.0.0.1:$port, data in $home/data (kept across restarts)" >&2
fi
mkdir -p "$home"
started=$SECONDS
# shellcheck disable=SC2086 # ES_JAVA_OPTS is a list of options
ES_HOME="$home" ES_PORT="$port" nohup java ${ES_JAVA_OPTS:--Xms1g -Xmx1g} \
  -cp "$jar:$module/target/lib/*" dedup.es.Launcher </dev/null >"$log" 2>&1 9>&- &
pid=$!
echo "$pid" >"$state/pid"

if wait_yellow "$timeout" "$pid"; then
  echo "Elasticsearch is up on 127.0.0.1:$port after $((SECONDS - started)) s (pid $pid, log $log)" >&2
  exit 0
fi
echo "Elasticsearch is not yellow on 127.0.0.1:$port (waited up to $timeout s); log $log:" >&2
tail -n 60 "$log" >&2 || true
kill "$pid" 2>/dev/null || true
exit 1
