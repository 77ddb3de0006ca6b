#!/usr/bin/env bash
# Build both images and run them against each other: the control plane container on PostgreSQL, an agent
# container enrolling into it and sending heartbeats. Run from the repository root on a machine with a
# Docker engine (root or the docker group), PostgreSQL reachable from the host network:
#
#   deploy/container_check.sh [POSTGRES_URL]     # default: the local `test` database, schema ef_container
#
# Containers use the host's network (--network host), so port 8700 (the server's, which its HEALTHCHECK asks)
# must be free on the host.
# What it checks, in order: both images build; the server runs as uid 10001 with its periodic jobs in a
# process of their own (a supervisor and two workers: requests, jobs); Docker's HEALTHCHECK turns healthy;
# keys and a TUF repository are made in the server's volume by the image itself; an agent container
# (uid 10002) enrolls with a one-time token and the repository's root.json, and its heartbeats reach the
# server (the device turns from pending to online). Everything it started is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=8700  # the image's HEALTHCHECK asks 127.0.0.1:8700
PG=${1:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
SCHEMA=ef_container
DB_URL="${PG}?options=-csearch_path%3D${SCHEMA}"
SERVER=http://127.0.0.1:${PORT}
step() { printf '\n== %s\n' "$*"; }
cleanup() {
  docker rm -f ef-check-server ef-check-agent >/dev/null 2>&1 || true
  docker volume rm ef-check-data ef-check-agent >/dev/null 2>&1 || true
  rm -rf "${WORK:-}"
}
cleanup  # what an interrupted run left
trap cleanup EXIT
WORK=$(mktemp -d)

step "build (base image: $(docker image inspect --format '{{.Id}}' python:3.11-slim 2>/dev/null || echo 'python:3.11-slim, pulled'))"
docker build --network host -q -f deploy/server.Dockerfile -t edgefleet-server:check .
docker build --network host -q -f deploy/agent.Dockerfile -t edgefleet-agent:check .
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep ':check'

step "database schema ${SCHEMA}"
docker run --rm --network host --entrypoint python edgefleet-server:check -c '
import sys, sqlalchemy as sa
eng = sa.create_engine(sys.argv[1], poolclass=sa.pool.NullPool)
with eng.begin() as c:
    c.execute(sa.text(f"DROP SCHEMA IF EXISTS {sys.argv[2]} CASCADE"))
    c.execute(sa.text(f"CREATE SCHEMA {sys.argv[2]}"))
' "$PG" "$SCHEMA"

step "keys and a repository in the server's volume, made by the image"
ef() { docker run --rm --network host -v ef-check-data:/data --entrypoint edgefleet edgefleet-server:check "$@"; }
ef keys init /data/keys >/dev/null
ef registry init /data/repo --keys /data/keys >/dev/null

step "server container"
docker run -d --name ef-check-server --network host -v ef-check-data:/data \
  -e "EDGEFLEET_SERVER_DB_URL=${DB_URL}" edgefleet-server:check \
  --insecure-http --port "${PORT}" --repo /data/repo --keys /data/keys >/dev/null
for _ in $(seq 1 120); do  # the HEALTHCHECK: 30 s start period, then every 15 s
  status=$(docker inspect --format '{{.State.Health.Status}}' ef-check-server)
  [ "$status" = healthy ] && break
  [ "$(docker inspect --format '{{.State.Running}}' ef-check-server)" = true ] || { docker logs ef-check-server; exit 1; }
  sleep 1
done
echo "health: ${status}"
[ "$status" = healthy ]
docker exec ef-check-server python -c '
import os
procs = []
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != os.getpid():
        cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
        uid = [ln.split()[1] for ln in open(f"/proc/{p}/status") if ln.startswith("Uid:")][0]
        procs.append((uid, cmd))
supervisor = [c for u, c in procs if "edgefleet server run" in c]
workers = [c for u, c in procs if "spawn_main" in c]  # the request process and the jobs process
print("uids:", sorted({u for u, _ in procs}), "supervisor:", len(supervisor), "workers:", len(workers))
assert {u for u, _ in procs} == {"10001"}, procs
assert len(supervisor) == 1 and len(workers) == 2, procs
'

step "agent container: enroll, then heartbeats"
docker cp ef-check-server:/data/repo/metadata/1.root.json "$WORK/root.json"
chmod 644 "$WORK/root.json"
TOKEN=$(docker exec -e EDGEFLEET_SERVER_URL="$SERVER" -e EDGEFLEET_TOKEN_FILE=/data/admin-token \
  ef-check-server edgefleet devices tokens create)
docker run --rm --network host -v ef-check-agent:/var/lib/edgefleet -v "$WORK/root.json:/root.json:ro" \
  edgefleet-agent:check enroll --server "$SERVER" --token "$TOKEN" --root /root.json --name container-agent
docker run -d --name ef-check-agent --network host -v ef-check-agent:/var/lib/edgefleet edgefleet-agent:check \
  run --no-progress >/dev/null
[ "$(docker exec ef-check-agent id -u)" = 10002 ]
for _ in $(seq 1 90); do
  devices=$(docker exec -e EDGEFLEET_SERVER_URL="$SERVER" -e EDGEFLEET_TOKEN_FILE=/data/admin-token \
    ef-check-server edgefleet devices list --json)
  echo "$devices" | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("devices",d) if isinstance(d,dict) else d; sys.exit(0 if any(x.get("name")=="container-agent" and x.get("status")=="online" for x in d) else 1)' && break
  sleep 1
done
echo "$devices" | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("devices",d) if isinstance(d,dict) else d; x=[x for x in d if x.get("name")=="container-agent"]; print({k: x[0].get(k) for k in ("id", "name", "status", "device_class", "arch")}); assert x and x[0]["status"]=="online"'
echo
echo "container check passed"
