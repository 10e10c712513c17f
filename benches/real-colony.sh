#!/usr/bin/env bash
# Real colony on loopback: N `aware-agent run` processes (release build), measured from their
# JSON logs (timestamps of "crowned queen", "member up", "member down"), `status --json` and
# their Prometheus `/metrics`:
#   - first queen: the first crowning after the last agent was spawned;
#   - membership: when every agent had logged all N-1 others up (log timestamps), and when
#     every agent's `status` showed all others up (polled, ~0.1 s resolution at N=20, slower at
#     N=100: one `status` process per agent per round);
#   - idle (IDLE_S seconds, colony settled): RSS (VmRSS) and CPU (utime+stime) per agent, gossip
#     bytes/s per agent sent and received (`aware_bytes_*_total` deltas), "member down" lines
#     logged (false downs: should be 0);
#   - crash detection: `kill -9` of a worker, then the time until every survivor logged it down;
#   - failover: KILLS times `kill -9` of the queen, time to the next crowning of a higher term;
#     the victim is restarted on its data directory and the colony settles between kills
#     (schedule: one kill every PERIOD_S seconds, as in sim/scenarios/real-20.yaml);
#   - the release binary's size.
# Usage: benches/real-colony.sh [N=20] [KILLS=3]
#   env: IDLE_S=20 PERIOD_S=8 BASE_PORT=<random> DETECT=1 (0: no worker kill)
#        PROFILE=release (cargo profile of the agent; `dist` is what ships, see Cargo.toml)
# Cleans up (processes it started, by pid, and its temp dir) on exit and on Ctrl-C. Loopback only;
# every wait has a deadline.
# Needs: bash, GNU date, awk, grep, sed, curl.
set -euo pipefail
N=${1:-20}
KILLS=${2:-3}
IDLE_S=${IDLE_S:-20}
PERIOD_S=${PERIOD_S:-8}
DETECT=${DETECT:-1}
PROFILE=${PROFILE:-release} # `dist` measures what ships (whole-program LTO: smaller code, smaller RSS)
BASE=${BASE_PORT:-$((20000 + RANDOM % 20000))}
MBASE=$((BASE + 1000)) # metrics ports
cd "$(dirname "$0")/.."

nice -n 10 cargo build --profile "$PROFILE" -p aware-agent --quiet
BIN=$PWD/target/$PROFILE/aware-agent
WORK=$(mktemp -d -t aware-colony.XXXXXX)
declare -a PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Credentials: the only place that knows how agents and the client are secured. ---------
"$BIN" ca init --dir "$WORK/ca" --colony bench >/dev/null   # a local colony: every agent holds the CA
node_creds() { echo "--ca-dir $WORK/ca"; }     # extra `run` flags for agent $1
client_creds() { echo "--admin-dir $WORK/ca"; } # extra `status` flags
# --------------------------------------------------------------------------------------------

SEEDS="127.0.0.1:$BASE,127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"
now() { date +%s.%N; }
# A sleep that a signal interrupts at once (a foreground `sleep` would delay the trap).
pause() { sleep "$1" & wait $!; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
# Log timestamp (RFC 3339, UTC) -> epoch seconds, for every line on stdin (field: the timestamp).
to_epoch() { date -f - +%s.%N; }

start() { # agent index
  local i=$1
  # shellcheck disable=SC2046
  AWARE_COLONY=bench AWARE_DATA_DIR="$WORK/data$i" \
    AWARE_BIND="127.0.0.1:$((BASE + i))" AWARE_SEEDS="$SEEDS" AWARE_BOOTSTRAP_EXPECT="$N" \
    AWARE_METRICS_BIND="127.0.0.1:$((MBASE + i))" \
    AWARE_LOG_FORMAT=json "$BIN" run $(node_creds "$i") 2>>"$WORK/log$i" >/dev/null </dev/null &
  PIDS[i]=$!
}

# Crownings as "epoch term node", oldest first.
crownings() {
  grep -h '"crowned queen"' "$WORK"/log* 2>/dev/null | while read -r line; do
    local ts term node
    ts=$(sed 's/.*"timestamp":"\([^"]*\)".*/\1/' <<<"$line")
    term=$(sed 's/.*"term":\([0-9]*\).*/\1/' <<<"$line")
    node=$(sed 's/.*"node":"\([0-9a-f]*\)".*/\1/' <<<"$line")
    echo "$(date -d "$ts" +%s.%N) $term $node"
  done | sort -n
}

# Waits (at most 60 s) for a crowning with a term above $1; prints "epoch term node".
wait_crowned_above() {
  local deadline=$(($(date +%s) + 60)) hit
  while [ "$(date +%s)" -lt "$deadline" ]; do
    hit=$(crownings | awk -v t="$1" '$2 > t' | head -1)
    [ -n "$hit" ] && { echo "$hit"; return 0; }
    pause 0.05
  done
  echo "no crowning above term $1 within 60 s" >&2
  return 1
}

up_count() { # agent index -> members it sees up (empty if it does not answer)
  # shellcheck disable=SC2046
  "$BIN" status --json --advertise "127.0.0.1:$((BASE + $1))" $(client_creds) \
    2>/dev/null | grep -c '"state": "up"' || true
}

running() { # indices of running agents
  local i
  for ((i = 0; i < N; i++)); do if [ -n "${PIDS[i]}" ]; then echo "$i"; fi; done
}

wait_all_known() { # every running agent sees all other running ones; at most 120 s
  local deadline=$(($(date +%s) + 120)) i ok want
  want=$(($(running | wc -l) - 1))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    ok=1
    for i in $(running); do
      [ "$(up_count "$i")" = "$want" ] || { ok=0; break; }
    done
    [ $ok = 1 ] && return 0
    pause 0.1
  done
  echo "not every agent sees all others within 120 s" >&2
  return 1
}

index_of() { # node id -> agent index
  grep -l "\"agent starting\".*\"node\":\"$1\"" "$WORK"/log* | head -1 | sed 's/.*log//'
}
node_of() { # agent index -> node id
  grep -m1 '"agent starting"' "$WORK/log$1" | sed 's/.*"node":"\([0-9a-f]*\)".*/\1/'
}

# Epoch at which agent $1's log first had all N-1 others up (distinct members, downs removed).
all_up_at() {
  grep -h '"member up"\|"member down"' "$WORK/log$1" | awk -v want=$((N - 1)) '
    {
      match($0, /"timestamp":"[^"]*"/); ts = substr($0, RSTART + 13, RLENGTH - 14)
      match($0, /"member":"[0-9a-f]*"/); m = substr($0, RSTART + 10, RLENGTH - 11)
      if ($0 ~ /"member up"/) { if (!(m in up)) { up[m] = 1; n++ } } else if (m in up) { delete up[m]; n-- }
      if (n >= want) { print ts; exit }
    }' | to_epoch
}

metric() { # agent index, series prefix -> sum of the matching series (0 if it does not answer)
  { curl -s --max-time 2 "http://127.0.0.1:$((MBASE + $1))/metrics" || true; } |
    awk -v s="$2" 'index($1, s) == 1 && (length($1) == length(s) || substr($1, length(s) + 1, 1) == "{") { t += $2 } END { print t + 0 }'
}

stats() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1; s += $1 } END { printf "min %s, median %s, max %s, mean %.2f", v[1], (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2, v[NR], s / NR }'; }

echo "== $N agents on 127.0.0.1:$BASE.., bootstrap_expect $N ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
t_first=$(now)
for ((i = 0; i < N; i++)); do start "$i"; done
t_last=$(now)
first=$(wait_crowned_above 0)
wait_all_known
t_known=$(now)
conv=$(for ((i = 0; i < N; i++)); do all_up_at "$i"; done | sort -n | tail -1)
boots=$(grep -h '"agent starting"' "$WORK"/log* | sed 's/.*"timestamp":"\([^"]*\)".*/\1/' | to_epoch | sort -n)
boot_last=$(tail -1 <<<"$boots")
echo "spawning all $N took $(sub "$t_last" "$t_first") s; their \"agent starting\" lines span $(sub "$boot_last" "$(head -1 <<<"$boots")") s, the last $(sub "$boot_last" "$t_last") s after the last spawn"
echo "first queen after the last \"agent starting\": $(sub "${first%% *}" "$boot_last") s"
echo "first queen: $(sub "${first%% *}" "$t_last") s after the last agent started ($(sub "${first%% *}" "$t_first") s after the first)"
echo "every agent logged all others up: $(sub "$conv" "$t_last") s after the last agent started"
echo "every agent's status shows all others up: $(sub "$t_known" "$t_last") s after the last agent started (status polling)"

pause 3
echo "== idle: ${IDLE_S} s"
ticks=$(getconf CLK_TCK)
declare -a CPU0=() TX0=() RX0=() SW0=()
downs0=$(cat "$WORK"/log* | grep -c '"member down"' || true)
for ((i = 0; i < N; i++)); do
  CPU0[i]=$(awk '{ print $14 + $15 }' "/proc/${PIDS[i]}/stat")
  TX0[i]=$(metric "$i" aware_bytes_sent_total)
  RX0[i]=$(metric "$i" aware_bytes_received_total)
  SW0[i]=$(metric "$i" 'aware_bytes_sent_total{channel="swim"}')
done
t0=$(now)
pause "$IDLE_S"
rss=() cpu=() tx=() rx=() sw=()
for ((i = 0; i < N; i++)); do
  rss+=("$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/${PIDS[i]}/status")")
  c1=$(awk '{ print $14 + $15 }' "/proc/${PIDS[i]}/stat")
  cpu+=("$(awk -v a="${CPU0[i]}" -v b="$c1" -v t="$ticks" -v s="$IDLE_S" 'BEGIN { printf "%.2f", (b - a) / t / s * 100 }')")
  t1=$(now)
  tx+=("$(awk -v a="${TX0[i]}" -v b="$(metric "$i" aware_bytes_sent_total)" -v s="$(sub "$t1" "$t0")" 'BEGIN { printf "%.0f", (b - a) / s }')")
  rx+=("$(awk -v a="${RX0[i]}" -v b="$(metric "$i" aware_bytes_received_total)" -v s="$(sub "$t1" "$t0")" 'BEGIN { printf "%.0f", (b - a) / s }')")
  sw+=("$(awk -v a="${SW0[i]}" -v b="$(metric "$i" 'aware_bytes_sent_total{channel="swim"}')" -v s="$(sub "$t1" "$t0")" 'BEGIN { printf "%.0f", (b - a) / s }')")
done
downs1=$(cat "$WORK"/log* | grep -c '"member down"' || true)
echo "idle RSS per agent (MB): $(echo "${rss[@]}" | stats)"
echo "idle CPU per agent (% of one core): $(echo "${cpu[@]}" | stats)"
queen_i=$(index_of "$(crownings | tail -1 | awk '{ print $3 }')")
echo "sent per agent, all frames (B/s): $(echo "${tx[@]}" | stats); the queen (agent $queen_i): ${tx[queen_i]}"
echo "sent per agent, SWIM frames only (B/s): $(echo "${sw[@]}" | stats)"
echo "received per agent, all frames (B/s): $(echo "${rx[@]}" | stats)"
echo "false downs logged while idle: $((downs1 - downs0))"

if [ "$DETECT" = 1 ]; then
  echo "== crash detection: kill -9 of a worker"
  queen=$(crownings | tail -1 | awk '{ print $3 }')
  victim=$(( $(index_of "$queen") == N - 1 ? N - 2 : N - 1 ))
  vnode=$(node_of "$victim")
  t_kill=$(now)
  kill -9 "${PIDS[victim]}"
  wait "${PIDS[victim]}" 2>/dev/null || true
  PIDS[victim]=""
  deadline=$(($(date +%s) + 60))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    seen=$(for i in $(running); do if grep -q "\"member down\".*\"member\":\"$vnode\"" "$WORK/log$i"; then echo "$i"; fi; done | wc -l)
    [ "$seen" = "$(running | wc -l)" ] && break
    pause 0.1
  done
  times=$(for i in $(running); do
    { grep "\"member down\".*\"member\":\"$vnode\"" "$WORK/log$i" || true; } | tail -1 | sed 's/.*"timestamp":"\([^"]*\)".*/\1/'
  done | to_epoch | sort -n)
  echo "worker $victim ($vnode) known down by $seen of $(running | wc -l) survivors; first after $(sub "$(head -1 <<<"$times")" "$t_kill") s, last after $(sub "$(tail -1 <<<"$times")" "$t_kill") s"
  start "$victim"
  wait_all_known
fi

echo "== failover: $KILLS kill -9 of the queen (one every $PERIOD_S s)"
declare -a FO=()
for ((k = 1; k <= KILLS; k++)); do
  t_slot=$(now)
  last=$(crownings | tail -1)
  read -r _ term node <<<"$last"
  victim=$(index_of "$node")
  t_kill=$(now)
  kill -9 "${PIDS[victim]}"
  wait "${PIDS[victim]}" 2>/dev/null || true
  PIDS[victim]=""
  next=$(wait_crowned_above "$term")
  fo=$(sub "${next%% *}" "$t_kill")
  FO+=("$fo")
  echo "kill $k: queen $node (term $term, agent $victim) -> new queen ${next##* } (term $(awk '{ print $2 }' <<<"$next")) after $fo s"
  # The victim restarts 3 s after its kill.
  pause "$(awk -v e="$(sub "$(now)" "$t_kill")" 'BEGIN { r = 3 - e; printf "%.2f", (r > 0 ? r : 0) }')"
  start "$victim"
  wait_all_known
  rest=$(awk -v p="$PERIOD_S" -v e="$(sub "$(now)" "$t_slot")" 'BEGIN { r = p - e; printf "%.2f", (r > 0 ? r : 0) }')
  pause "$rest"
done
if [ "$KILLS" -gt 0 ]; then
  echo "failover over $KILLS kills (s): $(echo "${FO[@]}" | stats)"
fi
echo "$PROFILE binary: $(stat -c %s "$BIN" | awk '{ printf "%.1f MB", $1 / 1048576 }') ($BIN; stripped: $(strip -o "$WORK/stripped" "$BIN" && stat -c %s "$WORK/stripped" | awk '{ printf "%.1f MB", $1 / 1048576 }'))"
