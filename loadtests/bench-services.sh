#!/usr/bin/env bash
# bench-services.sh — the services measured against the engine, in one run (`make bench-services`).
#
# Usage: loadtests/bench-services.sh [-s tiny|small|medium] [-r RUNS] [-p POLICIES] [-m MINUTES]
#                                    [-w WORKDIR] [--only "throughput schedule"] [--keep]
#   -s  dataset class of ../shared/bench/make-dataset.sh (default medium, ~2.1 GB)
#   -r  interleaved runs of the throughput comparison; the table shows medians (default 3)
#   -p  policies firing together for the schedule latency (default 30)
#   -m  minute boundaries they fire on (default 2)
#   -w  work dir (default ${TMPDIR:-/tmp}/arca-bench-services); the dataset is kept there
#   --only  run only these parts (throughput includes the footprint)
#   --keep  keep the data dirs and repositories of the last run
# Environment: ARCA_BIN / EVENTS_BIN skip the builds of `arca` / `bench-job-events`;
# ARCA_NATS_SERVER names the nats-server `arca server` starts (else the pinned one);
# ARCA_PARALLEL_JOBS (default 2) is how many jobs of a kind the server runs at once.
#
# 1. Throughput: per run, on the same dataset at the same path, (a) `arca backup` into a fresh
#    fs repository (init untimed) and (b) a first backup through a fresh `arca server`
#    (tenant, target, source and policy set up untimed; timed from `policy run` until
#    `job show --wait` returns). The order alternates between runs. For (b) the table also
#    gives JobRequested → end from the events (no CLI start-up, no 200 ms polling) and the
#    job's own duration_ms. Ratio = services / CLI throughput, target ≥ 90 %.
# 2. Footprint: RSS of `arca server` + its nats-server 5 s after start (idle, target < 300 MB
#    together) and the peak of their sum during (b), sampled every 100 ms from /proc (target
#    < 1 GB); VmHWM of each beside it.
# 3. Schedule latency: POLICIES policies `--every 60` on small sources fire on the same minute
#    boundaries; from the job events, JobStarted − trigger.at per scheduled job (target p99
#    < 1 s), split into scheduler (JobRequested − trigger.at) and queue (JobStarted − JobRequested).
#
# Needs: bash, coreutils, awk, openssl, cargo, a nats-server (infra/dev/ensure-tools.sh);
# GNU time (/usr/bin/time) for the CLI's peak RSS and CPU seconds.
set -euo pipefail
export LC_ALL=C
umask 022

SIZE=medium RUNS=3 POLICIES=30 MINUTES=2 WORK=${TMPDIR:-/tmp}/arca-bench-services KEEP=0
PARTS="throughput schedule"
while [ $# -gt 0 ]; do
  case "$1" in
    -s) SIZE=$2; shift 2 ;;
    -r) RUNS=$2; shift 2 ;;
    -p) POLICIES=$2; shift 2 ;;
    -m) MINUTES=$2; shift 2 ;;
    -w) WORK=$2; shift 2 ;;
    --only) PARTS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$RUNS$POLICIES$MINUTES" in *[!0-9]*) echo "-r, -p and -m take whole numbers" >&2; exit 2 ;; esac
[ "$RUNS" -ge 1 ] && [ "$POLICIES" -ge 1 ] && [ "$MINUTES" -ge 1 ] || { echo "-r, -p and -m must be at least 1" >&2; exit 2; }
case "$SIZE" in tiny | small | medium) ;; *) echo "-s takes tiny, small or medium" >&2; exit 2 ;; esac
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

REPO_ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
MD=${MAKE_DATASET:-$REPO_ROOT/../shared/bench/make-dataset.sh}
[ -x "$MD" ] || MD=/work/shared/bench/make-dataset.sh
[ -x "$MD" ] || { echo "make-dataset.sh not found (set MAKE_DATASET=/path/to/make-dataset.sh)" >&2; exit 1; }
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
LOG=$WORK/bench-services.log TSV=$WORK/results.tsv SCHED_TSV=$WORK/schedule-jobs.tsv
: >"$LOG"
say() { printf '[bench-services] %s\n' "$*" | tee -a "$LOG" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# ------------------------------------------------------------------ children and cleanup
# Every server this script starts is stopped on exit, however it exits: arca server by its
# pid (SIGTERM; it stops its nats-server), then anything of ours still alive by its pid.
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"/run-* "$WORK/sched" "$WORK/arca.bin" "$WORK/bench-job-events.bin"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ build
# The same build cache as the Makefile; private copies, because other checkouts' builds
# replace release/arca in the shared cache.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/arca/target}
ARCA_REV=$(cd "$REPO_ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)
[ -z "${ARCA_BIN:-}" ] || ARCA_REV="$ARCA_BIN, checkout at $ARCA_REV"
if [ -z "${ARCA_BIN:-}" ]; then
  say "building the release arca (cargo build --release -p arca-cli --bin arca)"
  (cd "$REPO_ROOT" && cargo build --release -p arca-cli --bin arca) 2>>"$LOG" || { say "build failed, see $LOG"; exit 1; }
  ARCA_BIN=$CARGO_TARGET_DIR/release/arca
fi
cp "$ARCA_BIN" "$WORK/arca.bin"; ARCA=$WORK/arca.bin
if [ -z "${EVENTS_BIN:-}" ]; then
  say "building bench-job-events (cargo build --release -p arca-loadtests --bin bench-job-events)"
  (cd "$REPO_ROOT" && cargo build --release -p arca-loadtests --bin bench-job-events) 2>>"$LOG" ||
    { say "build failed, see $LOG"; exit 1; }
  EVENTS_BIN=$CARGO_TARGET_DIR/release/bench-job-events
fi
if [ -n "${EVENTS_BIN:-}" ]; then cp "$EVENTS_BIN" "$WORK/bench-job-events.bin"; EVENTS_BIN=$WORK/bench-job-events.bin; fi
export ARCA_TOOLS_DIR=${ARCA_TOOLS_DIR:-$HOME/.cache/arca/tools}
if [ -z "${ARCA_NATS_SERVER:-}" ] && [ ! -x "$ARCA_TOOLS_DIR/bin/nats-server" ] && ! command -v nats-server >/dev/null; then
  say "installing nats-server (infra/dev/ensure-tools.sh)"
  "$REPO_ROOT/infra/dev/ensure-tools.sh" >>"$LOG" 2>&1
fi
# The server must start its own nats-server and catalog, whatever the caller's environment says.
unset ARCA_NATS_URL ARCA_CATALOG_DATABASE ARCA_SECRET_KEY_FILE ARCA_DATA_DIR ARCA_METRICS_ADDR

# ------------------------------------------------------------------ dataset
PRISTINE=$WORK/pristine-$SIZE SRC_BYTES=0 SRC_FILES=0 MiB=1048576
if part throughput; then # the schedule part makes its own small sources
  if ! grep -q '^# files=' "$PRISTINE.info" 2>/dev/null; then
    say "generating the $SIZE dataset in $PRISTINE (once; kept for later runs)"
    rm -rf "$PRISTINE"
    "$MD" gen "$PRISTINE" "$SIZE" 2>>"$LOG"
  fi
  SRC_BYTES=$(find "$PRISTINE" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s }')
  SRC_FILES=$(find "$PRISTINE" -type f | wc -l)
  say "dataset $SIZE: $SRC_FILES files, $SRC_BYTES bytes"
fi

# ------------------------------------------------------------------ arca server
free_port() { # a loopback port nobody listens on
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
  done
  return 1
}
rss_kb() { [ -r "/proc/$1/status" ] && awk -v f="${2:-VmRSS}:" '$1 == f { print $2 }' "/proc/$1/status" || echo 0; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); s += ($12 + $13) / hz } END { printf "%.2f", s }' "${@/#//proc/}" 2>/dev/null; } # PID...: user+sys s

# start_server DIR: `arca server` with its own nats-server on a free port; sets SERVER_PID,
# NATS_PID, NATS_URL; returns when the server says it is running.
start_server() {
  local dir=$1 port i
  mkdir -p "$dir"
  port=$(free_port)
  "$ARCA" server --data-dir "$dir" --nats-port "$port" --http-addr 127.0.0.1:0 >"$dir/server.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  NATS_URL=nats://127.0.0.1:$port NATS_PID=
  for i in $(seq 1 300); do
    grep -q 'Ctrl-C stops' "$dir/server.log" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { say "arca server exited: $(tail -n 3 "$dir/server.log")"; exit 1; }
    sleep 0.1
  done
  grep -q 'Ctrl-C stops' "$dir/server.log" || { say "arca server did not start within 30 s (see $dir/server.log)"; exit 1; }
  NATS_PID=$(pgrep -P "$SERVER_PID" -x nats-server | head -n 1 || true)
  [ -n "$NATS_PID" ] || { say "no nats-server child of arca server $SERVER_PID"; exit 1; }
  PIDS+=("$NATS_PID")
}
stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" "$NATS_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  PIDS=()
}
ctl() { ARCA_NATS_URL=$NATS_URL "$ARCA" "$@" 2>>"$LOG" || { say "FAILED: arca $* (see $LOG)"; return 1; }; }

# sample_rss OUT PID...: every 100 ms, the sum of the processes' VmRSS; the max (kB) goes to OUT
# when the sampler is killed with TERM.
sample_rss() {
  local out=$1 max=0 sum pid v; shift
  trap 'echo "$max" >"$out"; exit 0' TERM
  while :; do
    sum=0
    for pid in "$@"; do
      v=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null) || v=0
      sum=$((sum + ${v:-0}))
    done
    [ "$sum" -le "$max" ] || max=$sum
    sleep 0.1
  done
}

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$RUN" "$2" "$3" >>"$TSV"; } # part run key value

# ------------------------------------------------------------------ 1 + 2: throughput and footprint
PASS=bench-passphrase-not-secret
HAVE_TIME=0; [ -x /usr/bin/time ] && /usr/bin/time -f %e true 2>/dev/null && HAVE_TIME=1

cli_run() {
  local dir=$WORK/run-cli repo t0 t1 tf wall rss usr sys rc
  repo=$dir/repo
  rm -rf "$dir"; mkdir -p "$dir"
  ARCA_PASSWORD=$PASS "$ARCA" --repo "fs://$repo" repo init >>"$LOG" 2>&1
  sync
  say "cli run $RUN: arca backup (load $(cut -d' ' -f1 /proc/loadavg))"
  tf=$(mktemp)
  t0=$(now)
  set +e
  if [ "$HAVE_TIME" = 1 ]; then
    ARCA_PASSWORD=$PASS /usr/bin/time -f '%e %M %U %S' -o "$tf" "$ARCA" --repo "fs://$repo" backup --json "$PRISTINE" >"$dir/backup.json" 2>>"$LOG"
  else
    ARCA_PASSWORD=$PASS "$ARCA" --repo "fs://$repo" backup --json "$PRISTINE" >"$dir/backup.json" 2>>"$LOG"
  fi
  rc=$?
  set -e
  t1=$(now)
  [ "$rc" = 0 ] || { say "FAILED: arca backup (exit $rc), see $LOG"; record cli failed 1; }
  wall=$(elapsed "$t0" "$t1") rss=NA usr=0 sys=0
  [ "$HAVE_TIME" = 0 ] || read -r _ rss usr sys <"$tf"
  rm -f "$tf"
  record cli wall "$wall"
  record cli rss_kb "$rss"
  record cli cpu "$(awk -v u="$usr" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')"
  record cli bytes_read "$(tail -n 1 "$dir/backup.json" | sed -n 's/.*"bytes_read": *\([0-9]*\).*/\1/p')"
  say "cli run $RUN: ${wall}s"
  [ "$KEEP" = 1 ] || rm -rf "$dir"
}

services_run() {
  local dir=$WORK/run-services repo t0 t1 tenant target source policy job idle_s idle_n cpu0 cpu1 ev
  repo=$dir/repo
  rm -rf "$dir"; mkdir -p "$dir"
  start_server "$dir/data"
  sleep 5 # settled: streams and consumers created, catalog caught up
  idle_s=$(rss_kb "$SERVER_PID") idle_n=$(rss_kb "$NATS_PID")
  record services idle_server_kb "$idle_s"
  record services idle_nats_kb "$idle_n"
  tenant=$(ctl tenant create bench)
  target=$(ctl target add --tenant "$tenant" primary "fs://$repo")
  source=$(ctl source add --tenant "$tenant" data "$PRISTINE")
  policy=$(ctl policy create --tenant "$tenant" daily --source "$source" --target "$target" --every 31536000)
  # The storage service creates the repository when the target is added (like `repo init`: untimed).
  for _ in $(seq 1 300); do [ -e "$repo/config" ] && break; sleep 0.1; done
  [ -e "$repo/config" ] || say "the repository was not created within 30 s; the backup creates it (timed)"
  sync
  cpu0=$(cpu_s "$SERVER_PID/stat" "$NATS_PID/stat")
  sample_rss "$dir/peak" "$SERVER_PID" "$NATS_PID" &
  local sampler=$!
  say "services run $RUN: policy run + job show --wait (load $(cut -d' ' -f1 /proc/loadavg))"
  t0=$(now)
  job=$(ctl policy run --tenant "$tenant" "$policy")
  ctl job show --tenant "$tenant" "$job" --wait 3600 >"$dir/job.json" || { say "FAILED: the services backup, see $dir/job.json and $dir/data/server.log"; record services failed 1; }
  t1=$(now)
  kill -TERM "$sampler"; wait "$sampler" 2>/dev/null || true
  cpu1=$(cpu_s "$SERVER_PID/stat" "$NATS_PID/stat")
  record services wall "$(elapsed "$t0" "$t1")"
  record services duration_s "$(sed -n 's/.*"duration_ms": *\([0-9]*\).*/\1/p' "$dir/job.json" | awk '{ printf "%.3f", $1 / 1000 }')"
  record services bytes_read "$(sed -n 's/.*"bytes_read": *\([0-9]*\).*/\1/p' "$dir/job.json")"
  record services cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')"
  record services peak_kb "$(cat "$dir/peak" 2>/dev/null || echo 0)"
  record services hwm_server_kb "$(rss_kb "$SERVER_PID" VmHWM)"
  record services hwm_nats_kb "$(rss_kb "$NATS_PID" VmHWM)"
  if [ -n "${EVENTS_BIN:-}" ]; then
    # JobRequested → JobSucceeded from the events: the platform's time without CLI start-up and polling.
    ev=$("$EVENTS_BIN" --nats "$NATS_URL" 2>>"$LOG" | awk -F'\t' -v j="$job" '$2 == j && $8 != "-" { printf "%.3f", $8 - $6 }')
    [ -z "$ev" ] || record services events_s "$ev"
  fi
  say "services run $RUN: $(elapsed "$t0" "$t1")s, $(cat "$dir/job.json")"
  stop_server
  [ "$KEEP" = 1 ] || rm -rf "$dir"
}

printf 'part\trun\tkey\tvalue\n' >"$TSV"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if part throughput; then
  say "warming the page cache with the dataset"
  tar -C "$PRISTINE" -cf - . | cat >/dev/null
  for ((RUN = 1; RUN <= RUNS; RUN++)); do
    if [ $((RUN % 2)) = 1 ]; then cli_run; services_run; else services_run; cli_run; fi
  done
fi

# ------------------------------------------------------------------ 3: schedule → start latency
SCHED_DONE=0
if part schedule; then
  RUN=1
  dir=$WORK/sched
  rm -rf "$dir"; mkdir -p "$dir/sources"
  start_server "$dir/data"
  sleep 5
  record schedule idle_server_kb "$(rss_kb "$SERVER_PID")"
  record schedule idle_nats_kb "$(rss_kb "$NATS_PID")"
  tenant=$(ctl tenant create sched)
  target=$(ctl target add --tenant "$tenant" primary "fs://$dir/repo")
  for ((i = 1; i <= POLICIES; i++)); do
    src=$dir/sources/s$i
    mkdir -p "$src"
    for f in 1 2 3 4 5; do head -c 4096 /dev/urandom >"$src/f$f"; done
    source=$(ctl source add --tenant "$tenant" "s$i" "$src")
    ctl policy create --tenant "$tenant" "p$i" --source "$source" --target "$target" --every 60 >/dev/null
  done
  # Firings up to the MINUTES-th minute boundary from now count; later ones are ignored.
  last=$((($(date +%s) / 60 + MINUTES) * 60))
  say "schedule: $POLICIES policies every 60 s; waiting for the firings up to $(date -u -d "@$last" +%H:%M:%S) UTC"
  sleep $((last - $(date +%s) + 1))
  for _ in $(seq 1 180); do # until every counted firing has started (at most 3 minutes more)
    "$EVENTS_BIN" --nats "$NATS_URL" >"$SCHED_TSV" 2>>"$LOG" || true
    waiting=$(awk -F'\t' -v last="$last" 'NR > 1 && $4 == "schedule" && $5 <= last && $7 == "-"' "$SCHED_TSV" | wc -l)
    [ "$waiting" -gt 0 ] || break
    sleep 1
  done
  stop_server
  SCHED_DONE=1
  awk -F'\t' -v last="$last" 'NR > 1 && $4 == "schedule" && $5 <= last' "$SCHED_TSV" >"$SCHED_TSV.counted"
  say "schedule: $(wc -l <"$SCHED_TSV.counted") scheduled jobs counted"
fi

# ------------------------------------------------------------------ report
# Medians per part and key of the TSV.
med() {
  awk -F'\t' -v p="$1" -v k="$2" '
    $1 == p && $3 == k && $4 != "NA" && $4 != "" { a[++n] = $4 + 0 }
    END {
      if (n == 0) { print ""; exit }
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      print (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }' "$TSV"
}
maxof() { awk -F'\t' -v p="$1" -v k="$2" '$1 == p && $3 == k && $4 + 0 > m { m = $4 + 0 } END { print m + 0 }' "$TSV"; }
val() { awk -F'\t' -v p="$1" -v r="$2" -v k="$3" '$1 == p && $2 == r && $3 == k { print $4 }' "$TSV"; }
f() { awk -v x="$1" -v d="${2:-2}" 'BEGIN { if (x == "") print "–"; else printf "%.*f", d, x }'; }
mibs() { awk -v s="$1" -v b="$SRC_BYTES" 'BEGIN { if (s > 0) printf "%.0f", b / 1048576 / s; else print "–" }'; }
mb() { awk -v k="$1" 'BEGIN { if (k == "") print "–"; else printf "%.0f", k / 1024 }'; }
# pct CLI_S SERVICES_S: services throughput as a share of the CLI's (the same bytes: CLI time / services time)
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.0f %%", 100 * a / b; else print "–" }'; }
yes_no() { case "$1" in *–*) echo "–" ;; *) awk "BEGIN { print ($1) ? \"yes\" : \"**no**\" }" 2>/dev/null || echo "–" ;; esac; }
# percentiles of column SECONDS of the counted schedule jobs (nearest rank), in ms: p50 p99 max
sched_stats() {
  awk -F'\t' -v expr="$1" '
    {
      trig = $5; req = $6; st = $7
      if (expr == "start") v = st - trig; else if (expr == "request") v = req - trig; else v = st - req
      if (st == "-" && expr != "request") next
      a[++n] = v * 1000
    }
    END {
      if (n == 0) { print "– – –"; exit }
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      r50 = int(0.50 * n + 0.999999); r99 = int(0.99 * n + 0.999999)
      printf "%.0f %.0f %.0f\n", a[r50], a[r99], a[n]
    }' "$SCHED_TSV.counted"
}

{
  echo "### bench-services.sh — $(date -u +%Y-%m-%d\ %H:%M) UTC, $(nproc) cores, arca $ARCA_REV"
  echo
  if part throughput; then
    cw=$(med cli wall) sw=$(med services wall) se=$(med services events_s) sd=$(med services duration_s)
    echo "Dataset \`$SIZE\` ($SRC_FILES files, $((SRC_BYTES / MiB)) MiB), warm page cache, $RUNS interleaved run(s), first backup into a fresh fs repository."
    echo
    echo "| run | CLI \`arca backup\` s | CLI MiB/s | services: \`policy run\` → \`job show --wait\` s | services MiB/s | JobRequested → JobSucceeded s | job duration_ms s | services / CLI throughput |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for ((RUN = 1; RUN <= RUNS; RUN++)); do
      a=$(val cli "$RUN" wall) b=$(val services "$RUN" wall)
      echo "| $RUN | $(f "$a") | $(mibs "$a") | $(f "$b") | $(mibs "$b") | $(f "$(val services "$RUN" events_s)") | $(f "$(val services "$RUN" duration_s)") | $(pct "$a" "$b") |"
    done
    echo "| **median** | **$(f "$cw")** | **$(mibs "$cw")** | **$(f "$sw")** | **$(mibs "$sw")** | **$(f "$se")** | **$(f "$sd")** | **$(pct "$cw" "$sw")** |"
    echo
  fi
  echo "| measurement | result | target | met? |"
  echo "|---|---:|---|---|"
  if part throughput; then
    echo "| backup through the services / CLI, throughput (medians, wall clock of request → job end) | $(pct "$cw" "$sw") | ≥ 90 % | $(yes_no "$cw > 0 && $sw > 0 && $cw / $sw >= 0.9") |"
    [ -z "$se" ] || echo "| same, JobRequested → JobSucceeded from the events | $(pct "$cw" "$se") | ≥ 90 % | $(yes_no "$cw > 0 && $se > 0 && $cw / $se >= 0.9") |"
    echo "| same, the job's own duration_ms | $(pct "$cw" "$sd") | – | – |"
    echo "| CPU seconds (user+sys): CLI process / arca server + nats-server during the job | $(f "$(med cli cpu)" 1) / $(f "$(med services cpu)" 1) | – | – |"
    echo "| CLI backup peak RSS (/usr/bin/time) | $(mb "$(med cli rss_kb)") MiB | – | – |"
  fi
  idle_s=$(awk -F'\t' '$3 == "idle_server_kb"' "$TSV" | cut -f4 | sort -n | awk '{ a[++n] = $1 } END { if (n) print a[int((n + 1) / 2)] }')
  idle_n=$(awk -F'\t' '$3 == "idle_nats_kb"' "$TSV" | cut -f4 | sort -n | awk '{ a[++n] = $1 } END { if (n) print a[int((n + 1) / 2)] }')
  if [ -n "$idle_s" ]; then
    idle=$((idle_s + idle_n))
    echo "| idle RSS 5 s after start: arca server + nats-server (median of $(awk -F'\t' '$3 == "idle_server_kb"' "$TSV" | wc -l) starts) | $(mb "$idle") MiB ($(mb "$idle_s") + $(mb "$idle_n")) | < 300 MB | $(yes_no "$idle * 1024 < 300000000") |"
  fi
  if part throughput; then
    pk=$(maxof services peak_kb)
    echo "| peak RSS during the services backup, sum sampled every 100 ms (max of $RUNS; median $(mb "$(med services peak_kb)") MiB) | $(mb "$pk") MiB | < 1 GB | $(yes_no "$pk * 1024 < 1000000000") |"
    echo "| VmHWM at the end of the job: arca server / nats-server (max of $RUNS) | $(mb "$(maxof services hwm_server_kb)") / $(mb "$(maxof services hwm_nats_kb)") MiB | – | – |"
  fi
  if [ "$SCHED_DONE" = 1 ]; then
    n=$(wc -l <"$SCHED_TSV.counted") ns=$(awk -F'\t' '$7 != "-"' "$SCHED_TSV.counted" | wc -l)
    read -r s50 s99 smax < <(sched_stats start)
    read -r r50 r99 rmax < <(sched_stats request)
    read -r q50 q99 qmax < <(sched_stats queue)
    echo "| scheduled time → JobStarted, p50 / p99 / max ($n firings of $POLICIES policies \`--every 60\`, $ns started) | $s50 / $s99 / $smax ms | p99 < 1 s | $(if [ "$s99" = – ]; then echo –; else yes_no "$s99 < 1000 && $ns == $n"; fi) |"
    echo "| of which scheduled time → JobRequested (scheduler), p50 / p99 / max | $r50 / $r99 / $rmax ms | – | – |"
    echo "| of which JobRequested → JobStarted (queue), p50 / p99 / max | $q50 / $q99 / $qmax ms | – | – |"
  fi
  echo
  echo "- arca: $("$ARCA" --version | head -n1) ($ARCA_REV); \`arca server\` with ${ARCA_PARALLEL_JOBS:-2} jobs of each kind at once (ARCA_PARALLEL_JOBS)"
  echo "- load average (1/5/15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- raw numbers: $TSV$([ "$SCHED_DONE" = 0 ] || echo "; scheduled jobs: $SCHED_TSV"); log: $LOG"
} | tee "$WORK/results.md"
