#!/usr/bin/env bash
# bench.sh — Arca's data-path benchmark (`make bench`), optionally side by side with restic.
#
# Usage: loadtests/bench.sh [-s SIZE_MB] [-r RUNS] [-w WORKDIR] [--no-restic] [--keep]
#   -s  dataset size in MB (default 500)
#   -r  runs per tool; the table shows medians (default 3)
#   -w  work dir for dataset, repositories and restores (default ${TMPDIR:-/tmp}/arca-bench)
#   --no-restic  measure Arca only, even if restic is on PATH
#   --keep       keep the repositories of the last run (restores are always removed)
# Environment: ARCA_BIN=/path/to/arca skips the build and uses that binary.
#
# Per tool and run, on a fresh copy of the dataset at the same absolute path:
#   init (recorded, not tabled); backup 1 (initial); backup 2 (no change); mutate ~5% of the files;
#   backup 3 (after mutate); repository size; restore latest; verify the restored tree
#   against a checksum manifest of the mutated dataset; check --read-data.
# Runs are interleaved (run 1 of every tool, then run 2, ...) so that a noisy neighbour or
# the VM returning memory to its host hurts all tools alike. The page cache stays warm:
# this measures the tools, not the disk.
#
# Needs: bash, coreutils, findutils, awk, openssl (deterministic random bytes), cargo;
# GNU time (/usr/bin/time) for peak RSS and CPU seconds (without it only wall times).
set -euo pipefail
export LC_ALL=C
umask 022

SIZE_MB=500 RUNS=3 WORK=${TMPDIR:-/tmp}/arca-bench WITH_RESTIC=1 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    -s) SIZE_MB=$2; shift 2 ;;
    -r) RUNS=$2; shift 2 ;;
    -w) WORK=$2; shift 2 ;;
    --no-restic) WITH_RESTIC=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$SIZE_MB$RUNS" in *[!0-9]*) echo "-s and -r take whole numbers" >&2; exit 2 ;; esac
[ "$SIZE_MB" -ge 20 ] && [ "$RUNS" -ge 1 ] || { echo "-s must be at least 20 (MB), -r at least 1" >&2; exit 2; }
command -v openssl >/dev/null || { echo "bench.sh needs openssl for deterministic random data" >&2; exit 1; }

REPO_ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
LOG=$WORK/bench.log TSV=$WORK/results.tsv
: >"$LOG"
say() { printf '[bench] %s\n' "$*" | tee -a "$LOG" >&2; }

# ------------------------------------------------------------------ build
# The same build cache as the Makefile, so `make bench` after `make build` rebuilds nothing.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/arca/target}
if [ -z "${ARCA_BIN:-}" ]; then
  say "building the release arca (cargo build --release -p arca-cli)"
  (cd "$REPO_ROOT" && cargo build --release -p arca-cli --bin arca) 2>>"$LOG" ||
    { say "build failed, see $LOG"; exit 1; }
  ARCA_BIN=$CARGO_TARGET_DIR/release/arca
fi
[ -x "$ARCA_BIN" ] || { say "no arca binary at $ARCA_BIN"; exit 1; }
# The build cache is shared by every checkout on the machine, so another checkout's build can
# replace release/arca in the middle of a run: measure a private copy of what was built.
cp "$ARCA_BIN" "$WORK/arca.bin"; ARCA_BIN=$WORK/arca.bin
ARCA_REV=$(cd "$REPO_ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)

# ------------------------------------------------------------------ dataset
# Everything below is deterministic: the same SIZE_MB gives byte-identical files (same
# contents, names, modes and mtimes) on any machine, so results are comparable over time.
BASE_TS=1767225600 # 2026-01-01T00:00:00Z: every file and folder gets this mtime
MiB=1048576

# rand_bytes SEED N: exactly N incompressible bytes (AES-CTR keystream of a fixed key).
rand_bytes() { head -c "$2" /dev/zero | openssl enc -aes-256-ctr -nosalt -pbkdf2 -iter 1 -pass "pass:$1"; }

# log_text SEED N: exactly N bytes of log lines (an LCG picks words): compresses ~4-6x
# with zstd, like real service logs.
log_text() {
  awk -v seed="$1" -v n="$2" 'BEGIN {
    x = seed % 2147483646 + 1
    nw = split("alpha beta gamma delta backup chunk index pack blob tree snapshot upload retry timeout connected failed ok tenant bucket object lease", w, " ")
    split("INFO INFO INFO DEBUG WARN ERROR", lv, " ")
    t = 1767225600; tot = 0
    while (tot < n) {
      x = (x * 16807) % 2147483647; a = x
      x = (x * 16807) % 2147483647; b = x
      t += a % 3
      line = sprintf("%d.%03d host-%02d %s GET /api/v1/%s/%s/%d status=%d bytes=%d latency_ms=%d\n", t, b % 1000, a % 17, lv[1 + b % 6], w[1 + a % nw], w[1 + b % nw], b % 100000, (a % 10 < 9) ? 200 : 500, a % 65536, b % 900)
      if (tot + length(line) > n) line = substr(line, 1, n - tot)
      printf "%s", line; tot += length(line)
    }
  }'
}

# text_files SEED DIR BYTES: source-code-like files of 100 B .. 16 KiB (most under 2 KiB),
# 100 per folder — the many-small-files case that stresses per-file costs.
text_files() {
  awk -v seed="$1" -v dir="$2" -v budget="$3" 'BEGIN {
    x = seed % 2147483646 + 1
    nw = split("chunk index pack blob tree snapshot repo upload retry config value key name path size offset hash cipher nonce writer reader stream buffer queue worker pool error result", w, " ")
    ne = split("rs json toml yaml md txt c h py go", ext, " ")
    for (i = 0; done < budget; i++) {
      x = (x * 16807) % 2147483647; r = x
      if (r % 10 < 6) sz = 100 + r % 2000; else if (r % 10 < 9) sz = 2000 + r % 6000; else sz = 8000 + r % 8400
      if (i % 100 == 0) { d = sprintf("%s/d%04d", dir, int(i / 100)); system("mkdir -p " d) }
      f = sprintf("%s/f%06d.%s", d, i, ext[1 + int(r / 16) % ne])
      tot = 0
      while (tot < sz) {
        x = (x * 16807) % 2147483647; a = x
        k = a % 5
        if (k == 0) line = sprintf("fn %s_%s(%s: u64) -> Result<%d> {\n", w[1 + a % nw], w[1 + int(a / 7) % nw], w[1 + int(a / 49) % nw], a % 1000)
        else if (k == 1) line = sprintf("    let %s_%d = self.%s.get(%d)?;\n", w[1 + int(a / 3) % nw], a % 100, w[1 + int(a / 11) % nw], a % 4096)
        else if (k == 2) line = sprintf("    \"%s\": { \"%s\": %d },\n", w[1 + int(a / 5) % nw], w[1 + int(a / 13) % nw], a % 100000)
        else if (k == 3) line = sprintf("// %s %s %s: see issue #%d\n", w[1 + int(a / 17) % nw], w[1 + int(a / 19) % nw], w[1 + int(a / 23) % nw], a % 5000)
        else line = "}\n"
        if (tot + length(line) > sz) line = substr(line, 1, sz - tot)
        printf "%s", line > f; tot += length(line)
      }
      close(f); done += sz
    }
  }'
}

# gen_dataset DIR: about SIZE_MB MB (apparent size), by share of bytes:
#   text/      14%  many small text files (see text_files)
#   bin/        6%  small incompressible files of 512 B .. 200 KB (media, archives)
#   dups/       2%  exact copies of some text folders (whole-file dedup)
#   big/random.bin   25%  one incompressible file
#   big/app.log      12%  compressible log
#   big/text.tar     14%  tar of text/: compressible, and the same text at other offsets
#   big/disk.img     25%  VM-image-like: 4 MiB segments of random / hole (never written, so
#                         the file is sparse) / log text / a repeat of an earlier random
#                         segment (dedup inside one file), plus an unwritten tail
gen_dataset() {
  local out=$1 total=$((SIZE_MB * 1000 * 1000)) sz part seg nseg
  mkdir -p "$out/big" "$out/bin" "$out/dups"
  text_files 777 "$out/text" $((total * 14 / 100))
  for sz in 512 3000 12345 65536 200000; do
    part=$((total * 6 / 100 / 5 / sz * sz))
    mkdir -p "$out/bin/s$sz"
    rand_bytes "bin-$sz" "$part" | split -b "$sz" -a 5 -d --additional-suffix=.bin - "$out/bin/s$sz/b"
  done
  cp -r "$out/text/d0000" "$out/dups/d0000"
  [ -d "$out/text/d0001" ] && cp -r "$out/text/d0001" "$out/dups/d0001"
  rand_bytes big-random $((total * 25 / 100)) >"$out/big/random.bin"
  log_text 4242 $((total * 12 / 100)) >"$out/big/app.log"
  tar -C "$out" --sort=name --mtime="@$BASE_TS" --owner=0 --group=0 --numeric-owner -cf "$out/big/text.tar" text
  nseg=$((total * 25 / 100 / (4 * MiB)))
  truncate -s $(((nseg + 2) * 4 * MiB)) "$out/big/disk.img"
  for ((seg = 0; seg < nseg; seg++)); do
    [ $((seg % 4)) != 1 ] || continue # a hole: leave these 4 MiB unwritten
    case $((seg % 4)) in
      0) rand_bytes "img-$seg" $((4 * MiB)) ;;
      2) log_text $((seg + 7)) $((4 * MiB)) ;;
      3) rand_bytes "img-$((seg - 3))" $((4 * MiB)) ;;
    esac | dd of="$out/big/disk.img" bs=$MiB seek=$((seg * 4)) conv=notrunc status=none
  done
  normalize "$out"
}

normalize() { # DIR: fixed modes and mtimes, so metadata is deterministic too
  find "$1" -type d -exec chmod 755 {} + -exec touch -h -d "@$BASE_TS" {} +
  find "$1" -type f -exec chmod 644 {} + -exec touch -h -d "@$BASE_TS" {} +
}

# mutate DIR: changes ~5% of the small files and every big file, the way a day of work
# would. An LCG over the sorted file list picks the files; per file one of: overwrite 4 KiB
# in the middle (same size: only mtime/ctime tell), append, delete, or insert 64 bytes in
# the middle (shifts the rest: content-defined chunking must resync). Big files: random.bin
# +1% appended, disk.img three 1 MiB blocks overwritten, app.log 1 KiB inserted in the
# middle. Plus ~1% new files. Changed files get mtime + 1 day.
mutate() {
  local dir=$1 ts=$((BASE_TS + 86400)) act p f sz mid i=0 nf bsz
  (cd "$dir" && find . -type f ! -path './big/*' -printf '%P\n' | sort) |
    awk 'BEGIN { x = 7919 } { x = (x * 16807) % 2147483647; if (x % 100 < 5) print int(x / 100) % 4 "\t" $0 }' >"$WORK/mutate.plan"
  while IFS=$'\t' read -r act p; do
    f=$dir/$p; i=$((i + 1)); sz=$(stat -c %s "$f"); mid=$((sz / 2))
    case "$act" in
      0) rand_bytes "mut-$i" $((sz < 8192 ? (sz + 1) / 2 : 4096)) | dd of="$f" bs=4096 seek="$mid" oflag=seek_bytes conv=notrunc status=none ;;
      1) log_text "$i" 8192 >>"$f" ;;
      2) rm -f "$f"; continue ;;
      3) { head -c "$mid" "$f"; printf 'INSERTED %06d ------------------------------------------------------\n' "$i"; tail -c +$((mid + 1)) "$f"; } >"$f.tmp"
         mv -f "$f.tmp" "$f"; chmod 644 "$f" ;;
    esac
    touch -h -d "@$ts" "$f"
  done <"$WORK/mutate.plan"
  bsz=$(stat -c %s "$dir/big/random.bin")
  rand_bytes mut-random-append $((bsz / 100)) >>"$dir/big/random.bin"
  bsz=$(stat -c %s "$dir/big/disk.img")
  for p in 10 50 90; do
    rand_bytes "mut-img-$p" $MiB | dd of="$dir/big/disk.img" bs=$MiB seek=$((bsz / MiB * p / 100)) conv=notrunc status=none
  done
  bsz=$(stat -c %s "$dir/big/app.log"); mid=$((bsz / 2))
  { head -c "$mid" "$dir/big/app.log"; log_text 5 1024; tail -c +$((mid + 1)) "$dir/big/app.log"; } >"$dir/big/app.log.tmp"
  mv -f "$dir/big/app.log.tmp" "$dir/big/app.log"; chmod 644 "$dir/big/app.log"
  touch -h -d "@$ts" "$dir/big/random.bin" "$dir/big/disk.img" "$dir/big/app.log"
  nf=$(($(wc -l <"$WORK/mutate.plan") / 5 + 1))
  text_files 4243 "$dir/new/text" $((nf * 4000))
  rand_bytes mut-new-random $((SIZE_MB * 1000 * 1000 / 200)) >"$dir/new/new-random.bin"
  find "$dir/new" -type d -exec chmod 755 {} +
  find "$dir/new" -type f -exec chmod 644 {} + -exec touch -h -d "@$ts" {} +
  find "$dir" -type d -exec touch -h -d "@$BASE_TS" {} +
}

# manifest DIR: "hash  path" of every regular file, sorted; restores are verified with it.
hasher() { if command -v b3sum >/dev/null; then echo b3sum; else echo sha256sum; fi; }
manifest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r -n 256 "$(hasher)"); }
sum_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s }'; }

GEN_VERSION=1 # bump when the generator changes, so cached datasets are rebuilt
PRISTINE=$WORK/data-${SIZE_MB}mb MUTATED=$WORK/data-${SIZE_MB}mb-mutated
if [ "$(cat "$PRISTINE.done" 2>/dev/null)" != "$GEN_VERSION" ]; then
  say "generating the ${SIZE_MB} MB dataset in $PRISTINE (once; kept for later runs)"
  rm -rf "$PRISTINE" "$MUTATED" "$PRISTINE.done" "$MUTATED".*.manifest
  gen_dataset "$PRISTINE"
  cp -a "$PRISTINE" "$MUTATED"; mutate "$MUTATED"
  echo "$GEN_VERSION" >"$PRISTINE.done"
fi
# Named after the hasher: a manifest made with b3sum cannot check a restore hashed with sha256sum.
MANIFEST=$MUTATED.$(hasher).manifest
[ -s "$MANIFEST" ] || manifest "$MUTATED" >"$MANIFEST"
SRC_BYTES=$(sum_bytes "$PRISTINE") SRC_FILES=$(find "$PRISTINE" -type f | wc -l)
MUT_BYTES=$(sum_bytes "$MUTATED")
say "dataset: $SRC_FILES files, $SRC_BYTES bytes ($(du -s --block-size=1 "$PRISTINE" | cut -f1) allocated on disk); after mutate $MUT_BYTES bytes"

# ------------------------------------------------------------------ measuring
# T STEP cmd...: runs cmd (output to the log) for the current $TOOL and $RUN and appends
# "tool run step wall_s rss_kb cpu_s rc" to the TSV; GNU time gives peak RSS and CPU.
# cmd must be a program, not a shell function: that is why the tools below use `env`.
HAVE_TIME=0; [ -x /usr/bin/time ] && /usr/bin/time -f %e true 2>/dev/null && HAVE_TIME=1
T() {
  local step=$1 tf wall rss usr sys rc; shift
  echo "+ [$TOOL #$RUN $step] $*" >>"$LOG"
  sync # the previous step's dirty pages must not be written back during this one
  tf=$(mktemp)
  set +e
  if [ "$HAVE_TIME" = 1 ]; then
    /usr/bin/time -f '%e %M %U %S %x' -o "$tf" "$@" >>"$LOG" 2>&1
    read -r wall rss usr sys rc < <(tail -n 1 "$tf")
  else
    local t0; t0=$(date +%s.%N); "$@" >>"$LOG" 2>&1; rc=$?
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') rss=NA usr=NA sys=NA
  fi
  set -e
  rm -f "$tf"
  local cpu=NA; [ "$usr" = NA ] || cpu=$(awk -v u="$usr" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$TOOL" "$RUN" "$step" "$wall" "$rss" "$cpu" "$rc" >>"$TSV"
  LAST_RC=$rc
  [ "$rc" = 0 ] || say "FAILED (exit $rc): $TOOL run $RUN $step: $* (see $LOG)"
  return 0
}
record() { printf '%s\t%s\t%s\t%s\tNA\tNA\t0\n' "$TOOL" "$RUN" "$1" "$2" >>"$TSV"; }

# ------------------------------------------------------------------ tools
# Each tool: TOOL_init STEP REPO, TOOL_backup STEP REPO SRC, TOOL_restore STEP REPO DEST,
# TOOL_check STEP REPO, each wrapping its command in T. Passphrases are throwaway; restic's
# cache lives in the work dir and is removed before each run, like the repository.
PASS=bench-passphrase-not-secret
arca_run() { T "$1" env "ARCA_PASSWORD=$PASS" "$ARCA_BIN" --repo "fs://$2" "${@:3}"; }
arca_init() { arca_run "$1" "$2" repo init; }
arca_backup() { arca_run "$1" "$2" backup "$3"; }
arca_restore() { arca_run "$1" "$2" restore latest --target "$3"; }
arca_check() { arca_run "$1" "$2" check --read-data; }

restic_run() { T "$1" env "RESTIC_PASSWORD=$PASS" "RESTIC_CACHE_DIR=$WORK/restic-cache" restic -r "$2" "${@:3}"; }
restic_init() { restic_run "$1" "$2" init; }
restic_backup() { restic_run "$1" "$2" backup --host bench "$3"; }
restic_restore() { restic_run "$1" "$2" restore latest --target "$3"; }
restic_check() { restic_run "$1" "$2" check --read-data; }

TOOLS=arca
if [ "$WITH_RESTIC" = 1 ] && command -v restic >/dev/null; then TOOLS="arca restic"; fi

SRC=$WORK/src RESTORE=$WORK/restore
run_tool() {
  TOOL=$1 RUN=$2
  local repo=$WORK/repo-$1 root verify=FAIL
  say "$TOOL run $RUN/$RUNS"
  rm -rf "$repo" "$SRC" "$RESTORE" "$WORK/restic-cache"
  cp -a "$PRISTINE" "$SRC"
  "${TOOL}_init" init "$repo"
  [ "$LAST_RC" = 0 ] || return 0
  "${TOOL}_backup" backup1 "$repo" "$SRC"
  "${TOOL}_backup" backup2 "$repo" "$SRC"
  mutate "$SRC"
  "${TOOL}_backup" backup3 "$repo" "$SRC"
  record repo_bytes "$(du -sb "$repo" | cut -f1)"
  mkdir -p "$RESTORE"
  "${TOOL}_restore" restore "$repo" "$RESTORE"
  # Both tools restore absolute source paths below the target.
  root=$RESTORE; [ -d "$RESTORE$SRC" ] && root=$RESTORE$SRC
  if diff <(manifest "$root") "$MANIFEST" >"$WORK/verify-$TOOL.diff"; then verify=OK; else
    say "VERIFY FAILED: $TOOL run $RUN: the restored tree differs from the source (first lines of $WORK/verify-$TOOL.diff):"
    head -n 5 "$WORK/verify-$TOOL.diff" | tee -a "$LOG" >&2
  fi
  record verify "$verify"
  rm -rf "$RESTORE"
  "${TOOL}_check" check "$repo"
  [ "$KEEP" = 1 ] || rm -rf "$repo"
}

printf 'tool\trun\tstep\twall_s\trss_kb\tcpu_s\trc\n' >"$TSV"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((run = 1; run <= RUNS; run++)); do
  for tool in $TOOLS; do run_tool "$tool" "$run"; done
done
rm -rf "$SRC"

# ------------------------------------------------------------------ report
# Medians per tool and step; ratio = Arca / restic for the same row ("better" says which
# direction wins: a time ratio of 0.5 and a throughput ratio of 2.0 both mean 2x faster).
report() {
  awk -F'\t' -v src="$SRC_BYTES" -v mut="$MUT_BYTES" -v runs="$RUNS" '
    function med(key,   n, i, j, t, a) {
      if (!(key in v)) return ""
      n = split(v[key], a, " ")
      for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function fmt(x, d) { return x == "" ? "–" : sprintf("%." d "f", x) }
    function row(label, a, r, d, better,   ratio) {
      ratio = (a != "" && r != "" && r + 0 > 0) ? sprintf("%.2f", a / r) : "–"
      printf "| %s | %s | %s | %s | %s |\n", label, fmt(a, d), fmt(r, d), ratio, better
    }
    function both(label, key, d, better, scale,   a, r) {
      a = med("arca" SUBSEP key); r = med("restic" SUBSEP key)
      if (scale != "") { a = (a == "" ? "" : a / scale); r = (r == "" ? "" : r / scale) }
      row(label, a, r, d, better)
    }
    function rate(label, key, bytes,   a, r) {
      a = med("arca" SUBSEP key); r = med("restic" SUBSEP key)
      row(label, a > 0 ? bytes / 1048576 / a : "", r > 0 ? bytes / 1048576 / r : "", 0, "higher")
    }
    NR == 1 { next }
    $3 == "verify" { if ($4 != "OK") bad[$1] = bad[$1] " run" $2; seen[$1] = 1; next }
    {
      if ($7 != 0) failed[$1] = failed[$1] " " $3 "#" $2
      v[$1 SUBSEP $3] = v[$1 SUBSEP $3] " " $4
      if ($5 != "NA") { v[$1 SUBSEP $3 "_rss"] = v[$1 SUBSEP $3 "_rss"] " " $5; if ($5 > peak[$1 SUBSEP $2]) peak[$1 SUBSEP $2] = $5 }
      if ($6 != "NA") v[$1 SUBSEP $3 "_cpu"] = v[$1 SUBSEP $3 "_cpu"] " " $6
    }
    END {
      for (k in peak) { split(k, p, SUBSEP); v[p[1] SUBSEP "peak_rss"] = v[p[1] SUBSEP "peak_rss"] " " peak[k] }
      printf "| median of %d run(s) | Arca | restic | Arca/restic | better |\n|---|---:|---:|---:|---|\n", runs
      both("backup 1 (initial), s", "backup1", 2, "lower")
      rate("backup 1 throughput, MiB/s", "backup1", src)
      both("backup 1 CPU (user+sys), s", "backup1_cpu", 1, "lower")
      a = med("arca" SUBSEP "backup1"); r = med("restic" SUBSEP "backup1")
      row("backup 1 cores busy (CPU/wall)", a > 0 ? med("arca" SUBSEP "backup1_cpu") / a : "", r > 0 ? med("restic" SUBSEP "backup1_cpu") / r : "", 2, "–")
      both("backup 2 (no change), s", "backup2", 2, "lower")
      both("backup 3 (after mutate), s", "backup3", 2, "lower")
      both("restore, s", "restore", 2, "lower")
      rate("restore throughput, MiB/s", "restore", mut)
      both("check --read-data, s", "check", 2, "lower")
      both("repository size, MiB", "repo_bytes", 0, "lower", 1048576)
      both("repository / source bytes (after mutate)", "repo_bytes", 3, "lower", mut)
      both("backup 1 peak RSS, MiB", "backup1_rss", 0, "lower", 1024)
      both("restore peak RSS, MiB", "restore_rss", 0, "lower", 1024)
      both("peak RSS of any step, MiB", "peak_rss", 0, "lower", 1024)
      for (t in seen) printf "\n%s: restores verified %s", t, (t in bad) ? "FAILED in" bad[t] : "OK in every run"
      for (t in failed) printf "\n%s: FAILED steps:%s (the table includes them; see the log)", t, failed[t]
      printf "\n"
    }' "$TSV"
}
{
  echo "### bench.sh — ${SIZE_MB} MB dataset ($SRC_FILES files, $((SRC_BYTES / MiB)) MiB; $((MUT_BYTES / MiB)) MiB after mutate), warm page cache, $RUNS run(s), $(nproc) cores"
  echo
  report
  echo
  echo "- arca: $("$ARCA_BIN" --version | head -n1) (git $ARCA_REV)"
  echo "- load average (1/5/15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg) — well above 0 means other work shared the cores"
  case " $TOOLS " in *" restic "*) echo "- $(restic version | head -n1)" ;; *) echo "- restic: not run (not on PATH or --no-restic)" ;; esac
  echo "- raw numbers: $TSV; log: $LOG"
} | tee "$WORK/results.md"
