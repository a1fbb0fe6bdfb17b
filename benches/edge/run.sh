#!/usr/bin/env bash
# keygate at the edge: nginx auth_request under load, HTTP/1.1 keep-alive on loopback, wrk as the
# load generator. One nginx, three routes to the same app (benches/edge/fixture.rs):
#   open     no auth at all;
#   floor    auth_request to an endpoint that always answers 200 with identity headers (the
#            fixture's floor): what any auth service costs nginx at the least;
#   keygate  auth_request to `keygate serve` (release build) over a SQLite file, with a valid
#            key (cached after its first check).
# Both auth routes use the documented setup (docs/edge/nginx.conf): upstream keepalive,
# auth_request_set + proxy_set_header for the four identity headers, no body to the auth
# service. The routes run in rotating order, ROUNDS times; prints a markdown table of medians,
# with keygate/floor as the median of per-round ratios. Loopback only; bounded:
# ROUNDS x 3 x DURATION seconds.
#
# PIN=1 (the default) puts nginx (one worker), keygate, the floor and the app (one tokio worker
# each, one process each) on CPU 1 and wrk on CPU 0: the server side is the bottleneck, so req/s
# measures what a request costs it. PIN=0 lets everything share both cores. The script also
# reports each process's CPU time per request (from /proc).
#
#   benches/edge/run.sh                     # ROUNDS=5 DURATION=5 CONNECTIONS=32 PIN=1
#   PIN=0 ROUNDS=3 DURATION=8 benches/edge/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
PIN=${PIN:-1}
BASE_PORT=${BASE_PORT:-3300}
if [ "$PIN" = 1 ] && [ "$(nproc)" -lt 2 ]; then
  echo "one CPU only: running unpinned (PIN=0)" >&2
  PIN=0
fi
NGX_PORT=$BASE_PORT APP_PORT=$((BASE_PORT + 1)) FLOOR_PORT=$((BASE_PORT + 2)) KG_PORT=$((BASE_PORT + 3))

install() { # package
  echo "$1 not found; installing it from Debian's packages" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1") >/dev/null
}
command -v wrk >/dev/null 2>&1 || install wrk
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$NGINX_BIN" ] || { install nginx; NGINX_BIN=/usr/sbin/nginx; }

cargo build --release --quiet --features cli --bin keygate --example edge_fixture
bin=${CARGO_TARGET_DIR:-target}/release
out=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT
if [ "$PIN" = 1 ]; then
  server=(env TOKIO_WORKER_THREADS=1 taskset -c 1)
  load=(taskset -c 0)
else
  server=()
  load=()
fi

wait_port() { # port
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

# The key, created with the CLI; it lives in this shell and wrk's arguments only.
db="sqlite://$out/keys.db"
KEY=$("$bin/keygate" keys create --user 0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c \
  --description "edge benchmark" --database-url "$db" 2>/dev/null)

"${server[@]}" "$bin/keygate" serve --listen "127.0.0.1:$KG_PORT" --database-url "$db" \
  --log warn >"$out/keygate.log" 2>&1 &
pids+=($!)
keygate_pid=$!
APP_PORT=$APP_PORT "${server[@]}" "$bin/examples/edge_fixture" >"$out/app.log" 2>&1 &
pids+=($!)
app_pid=$!
FLOOR_PORT=$FLOOR_PORT "${server[@]}" "$bin/examples/edge_fixture" >"$out/floor.log" 2>&1 &
pids+=($!)
floor_pid=$!

mkdir -p "$out/nginx/tmp"
auth_location() { # name upstream
  cat <<EOF
    location = /_$1 {
      internal;
      proxy_pass http://$2/v1/authz;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Original-URI \$request_uri;
    }
EOF
}
guarded() { # route auth-location
  cat <<EOF
    location /$1/ {
      auth_request /_$2;
      auth_request_set \$kg_key_id   \$upstream_http_x_keygate_key_id;
      auth_request_set \$kg_key_type \$upstream_http_x_keygate_key_type;
      auth_request_set \$kg_user_id  \$upstream_http_x_keygate_user_id;
      auth_request_set \$kg_team_id  \$upstream_http_x_keygate_team_id;
      proxy_set_header X-Keygate-Key-Id   \$kg_key_id;
      proxy_set_header X-Keygate-Key-Type \$kg_key_type;
      proxy_set_header X-Keygate-User-Id  \$kg_user_id;
      proxy_set_header X-Keygate-Team-Id  \$kg_team_id;
      proxy_set_header Connection "";
      proxy_http_version 1.1;
      proxy_pass http://app;
    }
EOF
}
cat >"$out/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $out/nginx/nginx.pid;
error_log $out/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $out/nginx/tmp; proxy_temp_path $out/nginx/tmp;
  fastcgi_temp_path $out/nginx/tmp; uwsgi_temp_path $out/nginx/tmp; scgi_temp_path $out/nginx/tmp;
  upstream app     { server 127.0.0.1:$APP_PORT;   keepalive 64; keepalive_requests 1000000; }
  upstream floor   { server 127.0.0.1:$FLOOR_PORT; keepalive 64; keepalive_requests 1000000; }
  upstream keygate { server 127.0.0.1:$KG_PORT;    keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location /open/ {
      proxy_set_header Connection "";
      proxy_http_version 1.1;
      proxy_pass http://app;
    }
$(guarded floor floor)
$(guarded keygate keygate)
$(auth_location floor floor)
$(auth_location keygate keygate)
  }
}
EOF
ngx=("$NGINX_BIN" -p "$out/nginx" -c "$out/nginx/nginx.conf" -e "$out/nginx/error.log")
"${ngx[@]}" -t -q
if [ "$PIN" = 1 ]; then taskset -c 1 "${ngx[@]}" & else "${ngx[@]}" & fi
pids+=($!)
nginx_pid=$!
for port in $KG_PORT $APP_PORT $FLOOR_PORT $NGX_PORT; do wait_port "$port"; done

# Sanity: each route answers as expected (and keygate refuses a missing or wrong key).
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
url="http://127.0.0.1:$NGX_PORT"
[ "$(status "$url/open/")" = 200 ] || { echo "open route failed" >&2; exit 1; }
[ "$(status "$url/floor/")" = 200 ] || { echo "floor route failed" >&2; exit 1; }
[ "$(status -H "Authorization: Bearer $KEY" "$url/keygate/")" = 200 ] ||
  { echo "keygate route refused the key" >&2; cat "$out/keygate.log" >&2; exit 1; }
[ "$(status "$url/keygate/")" = 401 ] || { echo "keygate route let a request without a key through" >&2; exit 1; }
[ "$(status -H "Authorization: Bearer ${KEY%?}x" "$url/keygate/")" = 401 ] ||
  { echo "keygate route let a wrong key through" >&2; exit 1; }

# CPU time (clock ticks, user + system) of a process, for nginx its worker(s).
ticks() { # pid
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}
cpu() { # -> "nginx keygate floor app" ticks
  local worker total=0
  for worker in $(pgrep -P "$nginx_pid"); do total=$((total + $(ticks "$worker"))); done
  echo "$total $(ticks "$keygate_pid") $(ticks "$floor_pid") $(ticks "$app_pid")"
}
HZ=$(getconf CLK_TCK)

run_one() { # route round
  local before after
  before=$(cpu)
  "${load[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -H "Authorization: Bearer $KEY" "$url/$1/" >"$out/wrk-$1-$2.txt"
  after=$(cpu)
  python3 - "$out/wrk-$1-$2.txt" "$1" "$2" "$before" "$after" "$HZ" >>"$out/results.tsv" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
requests = int(re.search(r"(\d+) requests in", text).group(1))
lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"\s+(50|99)%\s+([\d.]+)(us|ms|s)", text))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
# CPU microseconds per request of nginx, keygate, the floor and the app during this run.
delta = [int(a) - int(b) for a, b in zip(sys.argv[5].split(), sys.argv[4].split())]
cpu = [d * 1e6 / int(sys.argv[6]) / requests for d in delta]
print(f"{sys.argv[3]}\t{sys.argv[2]}\t{rps}\t{lat['50']}\t{lat['99']}\t{errors.group(1) if errors else 0}\t" + "\t".join(f"{c:.2f}" for c in cpu))
PY
}

routes=(open floor keygate)
for round in $(seq 1 "$ROUNDS"); do
  for i in 0 1 2; do
    run_one "${routes[$(((round + i) % 3))]}" "$round"
  done
done

python3 - "$out/results.tsv" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$PIN" "$("$NGINX_BIN" -v 2>&1)" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by, rounds = {}, {}
cpu = {}
for rnd, route, rps, p50, p99, err, *us in rows:
    by.setdefault(route, []).append((float(rps), float(p50), float(p99), int(err)))
    cpu.setdefault(route, []).append([float(u) for u in us])
    rounds.setdefault(rnd, {})[route] = float(rps)
med = {r: tuple(statistics.median(x[i] for x in v) for i in range(3)) for r, v in by.items()}
errs = {r: sum(x[3] for x in v) for r, v in by.items()}
vs_floor = {r: [rd[r] / rd["floor"] for rd in rounds.values()] for r in by}
pin = ("nginx (1 worker), keygate, floor and app (1 tokio worker each) pinned to CPU 1, wrk to CPU 0"
       if sys.argv[5] == "1" else "unpinned")
print(f"{sys.argv[6]}; wrk -t1 -c{sys.argv[4]} -d{sys.argv[3]}s, {sys.argv[2]} rounds in rotating order, {pin}; medians\n")
print("| route | req/s | vs floor (median of per-round ratios) | ratio range | p50 (ms) | p99 (ms) | non-2xx |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in ["open", "floor", "keygate"]:
    rps, p50, p99 = med[r]
    lo, hi = min(vs_floor[r]), max(vs_floor[r])
    print(f"| {r} | {rps:,.0f} | {100*statistics.median(vs_floor[r]):.1f}% | {100*lo:.1f}–{100*hi:.1f}% | {p50:.3f} | {p99:.3f} | {errs[r]} |")
print("\nCPU per request, µs (median over rounds):\n")
print("| route | nginx worker | auth service | app | total |")
print("| --- | ---: | ---: | ---: | ---: |")
for r in ["open", "floor", "keygate"]:
    n, k, f, a = (statistics.median(x[i] for x in cpu[r]) for i in range(4))
    print(f"| {r} | {n:.1f} | {k + f:.1f} | {a:.1f} | {n + k + f + a:.1f} |")
print("\nper round (req/s):", {r: [round(x[0]) for x in v] for r, v in by.items()})
ratio = statistics.median(vs_floor["keygate"])
print(f"\nkeygate/floor: {100*ratio:.1f}% (target: at least 90%)")
PY
