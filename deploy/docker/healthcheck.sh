#!/bin/bash
# Liveness check of a Runnel node in a container (the image's HEALTHCHECK,
# installed as /usr/local/bin/runnel-healthcheck; docker-compose.yml uses it
# too). Exit 0: healthy; exit 1: not, with one line saying why.
#
# It sends GET /metrics to the node's metrics port and wants a 200: that
# port is served only once every partition is recovered, by the same process
# that serves gRPC. With metrics off it can only check that the gRPC port
# accepts a TCP connection. Pure bash (/dev/tcp): the image has no curl.
#
# Usage: runnel-healthcheck [HOST:PORT]
#   HOST:PORT  the metrics address; default: RUNNEL_METRICS_LISTEN, else the
#              metrics_listen key of RUNNEL_CONFIG, else 127.0.0.1:9741.
#              A wildcard host (0.0.0.0, [::], empty) is checked on 127.0.0.1.
set -uo pipefail

timeout_s=${RUNNEL_HEALTHCHECK_TIMEOUT:-4}

# The value of KEY in the TOML file RUNNEL_CONFIG, if it has one.
config_value() {
    local file=${RUNNEL_CONFIG:-}
    [[ -n $file && -r $file ]] || return 0
    sed -n -E "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"([^\"]*)\".*/\1/p" "$file" | tail -n 1
}

# "HOST:PORT" -> "HOST PORT", with wildcard hosts replaced by 127.0.0.1.
split_addr() {
    local addr=$1 host port
    port=${addr##*:}
    host=${addr%:*}
    host=${host#[}
    host=${host%]}
    case $host in '' | 0.0.0.0 | :: | '*') host=127.0.0.1 ;; esac
    printf '%s %s\n' "$host" "$port"
}

addr=${1:-${RUNNEL_METRICS_LISTEN:-$(config_value metrics_listen)}}
addr=${addr:-127.0.0.1:9741}

if [[ ${addr,,} == off ]]; then
    grpc=${RUNNEL_LISTEN:-$(config_value listen)}
    read -r host port <<<"$(split_addr "${grpc:-127.0.0.1:9740}")"
    if exec 3<>"/dev/tcp/$host/$port"; then
        exit 0
    fi 2>/dev/null
    echo "metrics off and the gRPC port $host:$port accepts no connection"
    exit 1
fi

read -r host port <<<"$(split_addr "$addr")"
if ! exec 3<>"/dev/tcp/$host/$port"; then
    echo "cannot connect to http://$host:$port/metrics"
    exit 1
fi 2>/dev/null
# One HTTP/1.0 request; the first line of the answer is the status line.
printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
if ! IFS= read -r -t "$timeout_s" status <&3 2>/dev/null; then
    echo "no HTTP answer from http://$host:$port/metrics (connection closed, or nothing within ${timeout_s}s)"
    exit 1
fi
status=${status%$'\r'}
if [[ $status == "HTTP/1."?" 200"* ]]; then
    exit 0
fi
echo "http://$host:$port/metrics answered: $status"
exit 1
