#!/usr/bin/env bash
# Over-the-wire load test: HTTP/1.1 keep-alive on loopback, wrk as the load generator.
# Runs bare / tower-http floor / keygate cache hit in alternation, ROUNDS times, and prints a
# markdown table of medians. Loopback only; bounded: ROUNDS x 3 x DURATION seconds.
#
#   benches/wire/run.sh                    # ROUNDS=3 DURATION=10 CONNECTIONS=32
#   ROUNDS=5 DURATION=15 benches/wire/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-3100}

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk not found; installing it from Debian's packages" >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
cargo build --release --quiet --example bench_server
server=target/release/examples/bench_server
out=$(mktemp -d)

run_one() { # variant round
  local variant=$1 round=$2 log="$out/server-$1-$2.log"
  VARIANT=$variant PORT=$PORT "$server" >"$log" 2>&1 &
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
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $key" \
    "http://127.0.0.1:$PORT/" >"$out/wrk-$variant-$round.txt"
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$out/wrk-$variant-$round.txt" "$variant" >>"$out/results.tsv" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"\s+(50|99)%\s+([\d.]+)(us|ms|s)", text))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{sys.argv[2]}\t{rps}\t{lat['50']}\t{lat['99']}\t{errors.group(1) if errors else 0}")
PY
}

for round in $(seq 1 "$ROUNDS"); do
  for variant in bare floor keygate; do
    run_one "$variant" "$round"
  done
done

python3 - "$out/results.tsv" "$ROUNDS" "$DURATION" "$CONNECTIONS" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = {}
for v, rps, p50, p99, err in rows:
    by.setdefault(v, []).append((float(rps), float(p50), float(p99), int(err)))
med = {v: tuple(statistics.median(x[i] for x in r) for i in range(3)) for v, r in by.items()}
errs = {v: sum(x[3] for x in r) for v, r in by.items()}
print(f"wrk -t1 -c{sys.argv[4]} -d{sys.argv[3]}s, {sys.argv[2]} alternating rounds, medians\n")
print("| variant | req/s | vs bare | p50 (ms) | p99 (ms) | non-2xx |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for v in ["bare", "floor", "keygate"]:
    rps, p50, p99 = med[v]
    print(f"| {v} | {rps:,.0f} | {100*rps/med['bare'][0]:.1f}% | {p50:.3f} | {p99:.3f} | {errs[v]} |")
print("\nper round (req/s):", {v: [round(x[0]) for x in r] for v, r in by.items()})
PY
