#!/usr/bin/env bash
# SDK compatibility test: drives keygate's key server (examples/key_server.rs) with Stack Auth's
# own npm SDK, the current and the previous release (versions pinned in package.json), and
# checks every key it mints with Stack's parser. See README.md.
#
# Exit codes: 0 all cases passed; 1 a case failed (or the setup did); 3 skipped because the npm
# registry could not be reached (or node/npm are missing). The last line is always
# `sdk compat: N passed, M failed` unless the run was skipped.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
SKIPPED=3

passed=0
failed=0
summary() { printf 'sdk compat: %d passed, %d failed\n' "$passed" "$failed"; }
fail_setup() { # message
  echo "FAIL setup: $*"
  failed=$((failed + 1))
  summary
  exit 1
}
# Masks anything shaped like a Stack API key to its last four characters.
scrub() { sed -E 's/\b([a-z]{2})_[A-Za-z0-9_]{60,}([A-Za-z0-9]{4})\b/\1_…\2/g'; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "sdk compat: skipped (node/npm not installed)"
  exit $SKIPPED
fi

# 1. The pinned SDKs, exactly as package-lock.json has them.
echo "==> npm ci (node $(node --version), npm $(npm --version))"
npm_log="$(mktemp)"
server_log="$(mktemp)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  rm -f "$npm_log" "$server_log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if ! (cd "$here" && timeout 300 npm ci --ignore-scripts --no-audit --no-fund --prefer-offline \
  --fetch-timeout=60000 --fetch-retries=2 --fetch-retry-mintimeout=2000 \
  --fetch-retry-maxtimeout=10000 >"$npm_log" 2>&1); then
  if ! (cd "$here" && timeout 60 npm ping --fetch-retries=1 --fetch-retry-mintimeout=2000 \
    --fetch-retry-maxtimeout=10000 >/dev/null 2>&1); then
    tail -n 5 "$npm_log"
    echo "sdk compat: skipped (npm registry unreachable)"
    exit $SKIPPED
  fi
  cat "$npm_log"
  fail_setup "npm ci failed although the registry answers"
fi

# 2. The key server, built like CI's examples step builds it, on a free loopback port.
echo "==> building the key server example"
build_json="$(cd "$repo" && timeout 1800 cargo build --example key_server --all-features \
  --message-format=json-render-diagnostics)" || fail_setup "cargo build --example key_server failed"
bin="$(printf '%s\n' "$build_json" | node -e '
  let exe = "";
  for (const line of require("fs").readFileSync(0, "utf8").split("\n")) {
    try { const m = JSON.parse(line); if (m.target && m.target.name === "key_server" && m.executable) exe = m.executable; } catch {}
  }
  process.stdout.write(exe);')"
[ -x "$bin" ] || fail_setup "no key_server executable found after the build"

port="$(node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')"
project_id="$(node -e 'console.log(require("crypto").randomUUID())')" # the SDK wants a UUID
secret="ssk_sdk_compat_$(node -e 'console.log(require("crypto").randomBytes(12).toString("hex"))')"
PORT="$port" STACK_PROJECT_ID="$project_id" STACK_SECRET_SERVER_KEY="$secret" \
  RUST_LOG="${RUST_LOG:-debug}" "$bin" >"$server_log" 2>&1 &
pid=$!
url="http://127.0.0.1:$port"
ready=""
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || { scrub <"$server_log"; fail_setup "the key server exited early"; }
  # Any HTTP answer from a key route (here 400 ACCESS_TYPE_REQUIRED) means it serves.
  code="$(timeout 5 node -e 'fetch(process.argv[1], { method: "POST", signal: AbortSignal.timeout(2000) })
    .then((r) => console.log(r.status), () => console.log(0))' "$url/api/v1/user-api-keys/check" 2>/dev/null || true)"
  if [ -n "$code" ] && [ "$code" != "0" ]; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || { scrub <"$server_log"; fail_setup "the key server did not answer on $url within 20 s"; }
echo "==> key server on $url (project $project_id)"

# 3. Each SDK version against it.
for sdk in previous current; do
  echo "==> SDK: $sdk"
  out="$(cd "$here" && KEYGATE_URL="$url" KEYGATE_PROJECT_ID="$project_id" \
    KEYGATE_SECRET_SERVER_KEY="$secret" KEYGATE_SERVER_LOG="$server_log" \
    timeout 300 node compat.js "$sdk" 2>&1 | scrub)"
  printf '%s\n' "$out"
  p="$(printf '%s\n' "$out" | grep -c '^PASS ')"
  f="$(printf '%s\n' "$out" | grep -c '^FAIL ')"
  passed=$((passed + p))
  failed=$((failed + f))
  if ! printf '%s\n' "$out" | grep -q '^# .*: done, '; then
    echo "FAIL [$sdk] the script did not finish (crashed or timed out)"
    failed=$((failed + 1))
  fi
done

if [ "$failed" -gt 0 ]; then
  echo "--- key server log (last 20 lines) ---"
  tail -n 20 "$server_log" | scrub
fi
summary
[ "$failed" -eq 0 ]
