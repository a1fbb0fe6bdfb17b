#!/usr/bin/env bash
# The key server's check endpoint under load (POST /api/v1/user-api-keys/check), on SQLite and
# on PostgreSQL, with PostgreSQL's own pgbench select-only run (`pgbench -S`: one single-row
# select by primary key per transaction) as the reference for what the database itself answers.
# Loopback only; bounded: (2 stores + pgbench) x ROUNDS x DURATION seconds.
#
# The server (examples/key_server.rs, release build) is pinned to CPU 1 and wrk/pgbench to CPU 0
# when PIN=1 (the default). PostgreSQL's own processes are not pinned: they share both cores, as
# they would on a small host.
#
#   benches/wire/check_endpoint.sh                 # ROUNDS=3 DURATION=5 CONNECTIONS=32
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test benches/wire/check_endpoint.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
PIN=${PIN:-1}
PORT=${PORT:-3200}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
PROJECT=7f3c2a10-5b4e-4d6a-9c8b-1e2f3a4b5c6d
SECRET=ssk_check_endpoint_bench_secret
if [ "$PIN" = 1 ] && [ "$(nproc)" -lt 2 ]; then PIN=0; fi

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk not found; installing it from Debian's packages" >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
for tool in wrk pgbench psql; do
  command -v $tool >/dev/null 2>&1 || { echo "$tool not found" >&2; exit 1; }
done
cargo build --release --quiet --example key_server --features server,sqlite,postgres
server=target/release/examples/key_server
out=$(mktemp -d)
bench_db="keygate_check_bench_$$"
admin_url="${DATABASE_URL%/*}/postgres"
pg_url="${DATABASE_URL%/*}/$bench_db"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $bench_db" >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT
psql -q "$admin_url" -c "CREATE DATABASE $bench_db" >/dev/null

if [ "$PIN" = 1 ]; then
  server_cmd=(env TOKIO_WORKER_THREADS=1 taskset -c 1 "$server")
  load=(taskset -c 0)
else
  server_cmd=("$server")
  load=()
fi

cat >"$out/check.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-stack-access-type"] = "server"
wrk.headers["x-stack-project-id"] = os.getenv("PROJECT")
wrk.headers["x-stack-secret-server-key"] = os.getenv("SECRET")
wrk.body = '{"api_key":"' .. os.getenv("KEY") .. '"}'
LUA

results="$out/results.tsv"
parse() { # file label round
  python3 - "$1" "$2" "$3" >>"$results" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
if "pgbench" in sys.argv[2]:
    tps = float(re.search(r"tps = ([\d.]+)", text).group(1))
    lat = float(re.search(r"latency average = ([\d.]+) ms", text).group(1))
    print(f"{sys.argv[3]}\t{sys.argv[2]}\t{tps}\t{lat}\tnan\t0")
else:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"\s+(50|99)%\s+([\d.]+)(us|ms|s)", text))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    print(f"{sys.argv[3]}\t{sys.argv[2]}\t{rps}\t{lat['50']}\t{lat['99']}\t{errors.group(1) if errors else 0}")
PY
}

run_store() { # label database-url round
  local label=$1 url=$2 round=$3 log="$out/server-$1-$3.log"
  KEYGATE_DATABASE_URL=$url PORT=$PORT STACK_PROJECT_ID=$PROJECT STACK_SECRET_SERVER_KEY=$SECRET \
    RUST_LOG=warn "${server_cmd[@]}" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/api/v1/user-api-keys/check" && break
    sleep 0.1
  done
  local h=(-H 'x-stack-access-type: server' -H "x-stack-project-id: $PROJECT"
    -H "x-stack-secret-server-key: $SECRET" -H 'content-type: application/json')
  local key
  key=$(curl -s "${h[@]}" -d '{"user_id":"0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c","description":"bench","expires_at_millis":null}' \
    "http://127.0.0.1:$PORT/api/v1/user-api-keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])')
  # Sanity: the key checks out, and a wrong one is refused.
  [ "$(curl -s -o /dev/null -w '%{http_code}' "${h[@]}" -d "{\"api_key\":\"$key\"}" \
    "http://127.0.0.1:$PORT/api/v1/user-api-keys/check")" = 200 ]
  KEY=$key PROJECT=$PROJECT SECRET=$SECRET "${load[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
    --latency -s "$out/check.lua" "http://127.0.0.1:$PORT/api/v1/user-api-keys/check" \
    >"$out/wrk-$label-$round.txt"
  kill $pid; wait $pid 2>/dev/null || true
  pid=
  parse "$out/wrk-$label-$round.txt" "$label" "$round"
}

pgbench -i -q -s 1 "$pg_url" >/dev/null 2>&1
for round in $(seq 1 "$ROUNDS"); do
  rm -f "$out"/keygate.db*
  run_store sqlite "sqlite://$out/keygate.db" "$round"
  run_store postgres "$pg_url" "$round"
  "${load[@]}" pgbench -n -S -c"$CONNECTIONS" -j1 -T"$DURATION" "$pg_url" >"$out/pgbench-$round.txt" 2>&1
  parse "$out/pgbench-$round.txt" "pgbench -S" "$round"
done

python3 - "$results" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$PIN" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = {}
for rnd, v, rps, p50, p99, err in rows:
    by.setdefault(v, []).append((float(rps), float(p50), float(p99), int(err)))
pin = "key server pinned to CPU 1 with one worker, load to CPU 0" if sys.argv[5] == "1" else "unpinned"
print(f"{sys.argv[4]} connections, {sys.argv[3]} s per run, {sys.argv[2]} rounds, {pin}; medians\n")
print("| target | req/s (tps for pgbench) | p50 (ms) | p99 (ms) | non-2xx |")
print("| --- | ---: | ---: | ---: | ---: |")
for v in ["sqlite", "postgres", "pgbench -S"]:
    r = by[v]
    med = [statistics.median(x[i] for x in r) for i in range(3)]
    p99 = "n/a" if med[2] != med[2] else f"{med[2]:.3f}"
    label = "pgbench -S (average latency)" if v.startswith("pgbench") else v
    print(f"| {label} | {med[0]:,.0f} | {med[1]:.3f} | {p99} | {sum(x[3] for x in r)} |")
PY
