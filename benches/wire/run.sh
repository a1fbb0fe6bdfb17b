#!/usr/bin/env bash
# Over-the-wire load test: HTTP/1.1 keep-alive on loopback, wrk as the load generator.
# Runs bare / tower-http floor / keygate cache hit in alternation (the order rotates each
# round), ROUNDS times, and prints a markdown table of medians, with each variant's throughput
# as a median of per-round ratios to the bare server of the same round. Loopback only; bounded:
# ROUNDS x 3 x DURATION seconds.
#
# PIN=1 (the default) gives the server one core and one worker thread (`taskset -c 1`,
# TOKIO_WORKER_THREADS=1) and wrk the other core, so the server is the bottleneck and the
# load generator does not steal its CPU: throughput then measures the server's cost per request.
# PIN=0 lets both share both cores, with the server's default two worker threads.
#
#   benches/wire/run.sh                    # ROUNDS=10 DURATION=5 CONNECTIONS=32 PIN=1
#   PIN=0 ROUNDS=6 DURATION=8 benches/wire/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-5}
PIN=${PIN:-1}
if [ "$PIN" = 1 ] && [ "$(nproc)" -lt 2 ]; then
  echo "one CPU only: running unpinned (PIN=0)" >&2
  PIN=0
fi
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-3100}

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk not found; installing it from Debian's packages" >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
cargo build --release --quiet --example bench_server
server=target/release/examples/bench_server
out=$(mktemp -d)
# The server logs hold the load-test key: removed with the rest on exit.
trap 'rm -rf "$out"' EXIT
if [ "$PIN" = 1 ]; then
  server_cmd=(env TOKIO_WORKER_THREADS=1 taskset -c 1 "$server")
  wrk_cmd=(taskset -c 0 wrk)
else
  server_cmd=("$server")
  wrk_cmd=(wrk)
fi

run_one() { # variant round
  local variant=$1 round=$2 log="$out/server-$1-$2.log"
  VARIANT=$variant PORT=$PORT "${server_cmd[@]}" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do grep -q '^key: ' "$log" && break; sleep 0.1; done
  local key
  key=$(sed -n 's/^key: //p' "$log")
  [ -n "$key" ] || { cat "$log"; kill $pid; exit 1; }
  # Sanity: the guard admits the key (and, for guarded variants, refuses a missing one).
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" "http://127.0.0.1:$PORT/")" = 200 ]
  if [ "$variant" != bare ]; then
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")" = 401 ]
  fi
  "${wrk_cmd[@]}" -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $key" \
    "http://127.0.0.1:$PORT/" >"$out/wrk-$variant-$round.txt"
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$out/wrk-$variant-$round.txt" "$variant" "$round" >>"$out/results.tsv" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"\s+(50|99)%\s+([\d.]+)(us|ms|s)", text))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{sys.argv[3]}\t{sys.argv[2]}\t{rps}\t{lat['50']}\t{lat['99']}\t{errors.group(1) if errors else 0}")
PY
}

variants=(bare floor keygate)
for round in $(seq 1 "$ROUNDS"); do
  for i in 0 1 2; do
    run_one "${variants[$(((round + i) % 3))]}" "$round"
  done
done

python3 - "$out/results.tsv" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$PIN" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by, rounds = {}, {}
for rnd, v, rps, p50, p99, err in rows:
    by.setdefault(v, []).append((float(rps), float(p50), float(p99), int(err)))
    rounds.setdefault(rnd, {})[v] = float(rps)
med = {v: tuple(statistics.median(x[i] for x in r) for i in range(3)) for v, r in by.items()}
errs = {v: sum(x[3] for x in r) for v, r in by.items()}
ratio = {v: [r[v] / r["bare"] for r in rounds.values()] for v in by}
pin = "server pinned to CPU 1 with one worker, wrk to CPU 0" if sys.argv[5] == "1" else "unpinned"
print(f"wrk -t1 -c{sys.argv[4]} -d{sys.argv[3]}s, {sys.argv[2]} rounds in rotating order, {pin}; medians\n")
print("| variant | req/s | vs bare (median of per-round ratios) | ratio range | p50 (ms) | p99 (ms) | non-2xx |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for v in ["bare", "floor", "keygate"]:
    rps, p50, p99 = med[v]
    lo, hi = min(ratio[v]), max(ratio[v])
    print(f"| {v} | {rps:,.0f} | {100*statistics.median(ratio[v]):.1f}% | {100*lo:.1f}–{100*hi:.1f}% | {p50:.3f} | {p99:.3f} | {errs[v]} |")
print("\nper round (req/s):", {v: [round(x[0]) for x in r] for v, r in by.items()})
PY
