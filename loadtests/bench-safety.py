#!/usr/bin/env python3
"""The crash-and-fault campaign: does Arca ever lose a restore point or restore wrong bytes?

Three parts, each against the real `arca` binary, on a filesystem repository and on an S3
emulator (moto):

  kills     kill -9 at random points of backup, copy, forget and prune (`--kills` in all);
            after every kill the repository must check clean, and at the end every snapshot
            left must restore byte for byte.
  prune     concurrent backups against a prune loop (`--prune-minutes`), prunes with no grace
            period and backups stopped (SIGSTOP) for longer than a lease lasts; every backup
            that exits 0 must restore byte for byte at the end.
  flips     single-byte flips in packs, index files, snapshots and the config (`--flips`);
            each must be detected by `check --read-data`, and a restore must never give other
            bytes than were backed up.

Prints a Markdown table (kills, flips, detected, restores byte-identical, data lost, silent
wrong restores). Exit status 1 when data was lost or a restore was silently wrong.

Usage: ARCA_BIN=target/release/arca ARCA_TEST_S3_ENDPOINT=http://… bench-safety.py [options]
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ARCA = os.environ.get("ARCA_BIN", "arca")
PASSWORD = "safety-campaign"


class Repo:
    """One repository (fs or S3) and the environment `arca` needs for it."""

    def __init__(self, kind: str, work: Path, name: str):
        self.kind = kind
        self.env = dict(os.environ, ARCA_PASSWORD=PASSWORD, ARCA_TEST_FAST_KDF="1")
        if kind == "fs":
            self.path = work / name
            self.url = f"fs://{self.path}"
        else:
            endpoint = os.environ["ARCA_TEST_S3_ENDPOINT"]
            bucket = f"safety-{name}-{random.randrange(1 << 30):x}"
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")).read()
            self.url = f"s3://{bucket}/repo"
            self.env.update(
                AWS_ENDPOINT_URL=endpoint,
                AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test",
                AWS_REGION="us-east-1",
                ARCA_STORAGE_RETRIES="1",
            )
        self.env["ARCA_REPO"] = self.url

    def run(self, *args, check=False, extra_env=None, timeout=600):
        env = dict(self.env, **(extra_env or {}))
        out = subprocess.run([ARCA, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"arca {' '.join(args)} failed: {out.stderr.strip()}")
        return out

    def spawn(self, *args, extra_env=None):
        env = dict(self.env, **(extra_env or {}))
        return subprocess.Popen([ARCA, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def snapshots(self):
        out = self.run("snapshots", "--json", check=True)
        return {s["id"]: s for s in json.loads(out.stdout.strip().splitlines()[-1])}


def tree_digest(root: Path) -> str:
    """Content digest of every regular file under `root`, by relative path."""
    h = hashlib.blake2b()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        h.update(str(path.relative_to(root)).encode())
        h.update(hashlib.blake2b(path.read_bytes()).digest())
    return h.hexdigest()


def mutate(src: Path, rng: random.Random, files: int = 24):
    """Rewrites a few files of a small tree (new random content, some shared blocks)."""
    src.mkdir(parents=True, exist_ok=True)
    for i in rng.sample(range(files), k=max(1, files // 4)):
        size = rng.choice([3_000, 200_000, 900_000, 2_500_000])
        block = rng.randbytes(64 * 1024)
        data = (block * (size // len(block) + 1))[:size] if rng.random() < 0.3 else rng.randbytes(size)
        (src / f"f{i:02}.bin").write_bytes(data)


def restored_digest(repo: Repo, snapshot: str, work: Path, src: str):
    """The digest of a snapshot of folder `src` restored into a fresh folder, or None if the
    restore failed."""
    dest = Path(tempfile.mkdtemp(dir=work, prefix="restore-"))
    try:
        out = repo.run("restore", snapshot, "--target", str(dest))
        if out.returncode != 0:
            return None
        return tree_digest(dest / src.lstrip("/"))
    finally:
        shutil.rmtree(dest, ignore_errors=True)


class Tally:
    def __init__(self):
        self.kills = 0
        self.checks_failed = []
        self.restores = 0
        self.identical = 0
        self.lost = []
        self.wrong = []
        self.flips = 0
        self.detected = 0
        self.backups_ok = 0
        self.backups_refused = 0
        self.pauses = 0
        self.prunes = 0


def verify_all(repo: Repo, expected: dict, work: Path, tally: Tally, what: str):
    """Every snapshot in `expected` (id → digest) that still exists must restore byte for byte."""
    existing = repo.snapshots()
    for sid, digest in expected.items():
        if sid not in existing:
            continue
        tally.restores += 1
        got = restored_digest(repo, sid, work, existing[sid]["paths"][0])
        if got is None:
            tally.lost.append(f"{what}: snapshot {sid[:8]} does not restore")
        elif got != digest:
            tally.wrong.append(f"{what}: snapshot {sid[:8]} restores other bytes")
        else:
            tally.identical += 1


def kill_campaign(kind: str, kills: int, work: Path, rng: random.Random, tally: Tally):
    repo = Repo(kind, work, f"kills-{kind}")
    offsite = Repo(kind, work, f"kills-{kind}-copy")
    src = work / f"src-kills-{kind}"
    repo.run("repo", "init", "--pack-size-mib", "1", check=True)
    # A killed prune leaves its sweep unfinished: writers that overlap it wait until its
    # heartbeat is this old before they take it for dead (5 minutes by default).
    repo.env["ARCA_SWEEP_STALE_SECS"] = offsite.env["ARCA_SWEEP_STALE_SECS"] = "10"
    expected = {}
    durations = {}
    operations = ["backup", "backup", "copy", "forget", "prune"]
    done = 0
    while done < kills:
        op = rng.choice(operations)
        if op == "backup":
            mutate(src, rng)
            args = ["backup", "--json", str(src)]
        elif op == "copy":
            args = ["copy", "--to", offsite.url, "--init", "latest"] if expected else None
        elif op == "forget":
            args = ["forget", "--keep-last", str(rng.randint(2, 4))]
        else:
            args = ["prune", "--grace", rng.choice(["0s", "1h"])]
        if args is None:
            continue
        env = {"ARCA_TO_PASSWORD": PASSWORD, **{k: v for k, v in offsite.env.items() if k.startswith("AWS_")}}
        typical = durations.get(op, 1.0)
        started = time.monotonic()
        proc = repo.spawn(*args, extra_env=env)
        time.sleep(rng.random() * typical * 1.2)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate()
        if not killed:
            durations[op] = max(0.05, time.monotonic() - started)
            if op == "backup" and proc.returncode == 0:
                sid = json.loads(stdout.strip().splitlines()[-1])["snapshot_id"]
                expected[sid] = tree_digest(src)
            continue
        done += 1
        tally.kills += 1
        out = repo.run("check")
        if out.returncode != 0:
            tally.checks_failed.append(f"{kind} after killing {op}: {out.stdout.strip()[-300:]}")
    # What was killed left nothing that stops the next runs.
    mutate(src, rng)
    out = repo.run("backup", "--json", str(src), check=True)
    expected[json.loads(out.stdout.strip().splitlines()[-1])["snapshot_id"]] = tree_digest(src)
    repo.run("prune", "--grace", "0s", check=True)
    out = repo.run("check", "--read-data")
    if out.returncode != 0:
        tally.checks_failed.append(f"{kind} final read-data check: {out.stdout.strip()[-300:]}")
    verify_all(repo, expected, work, tally, f"kills/{kind}")


def prune_campaign(kind: str, minutes: float, work: Path, rng: random.Random, tally: Tally):
    repo = Repo(kind, work, f"prune-{kind}")
    repo.run("repo", "init", "--pack-size-mib", "1", check=True)
    fast_leases = {"ARCA_LOCK_STALE_SECS": "2", "ARCA_SWEEP_STALE_SECS": "8"}
    expected = {}
    deadline = time.monotonic() + minutes * 60
    sources = [work / f"src-prune-{kind}-{i}" for i in range(2)]
    running = []
    while time.monotonic() < deadline or running:
        # Two writers at a time: each backs up its own tree, sometimes stopped past its lease.
        while len(running) < 2 and time.monotonic() < deadline:
            busy = {s for _, s, _ in running}
            src = next(s for s in sources if s not in busy)
            mutate(src, rng)
            digest = tree_digest(src)
            proc = repo.spawn("backup", "--json", str(src), extra_env=fast_leases)
            running.append((proc, src, digest))
        for entry in list(running):
            proc, src, digest = entry
            if proc.poll() is None and rng.random() < 0.15:
                proc.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(2.5, 4.0))
                proc.send_signal(signal.SIGCONT)
                tally.pauses += 1
            if proc.poll() is not None:
                stdout, stderr = proc.communicate()
                running.remove(entry)
                if proc.returncode == 0:
                    tally.backups_ok += 1
                    expected[json.loads(stdout.strip().splitlines()[-1])["snapshot_id"]] = digest
                else:
                    tally.backups_refused += 1
        repo.run("forget", "--keep-last", "3", extra_env=fast_leases)
        out = repo.run("prune", "--grace", "0s", extra_env=fast_leases)
        tally.prunes += out.returncode == 0
        time.sleep(rng.random() * 0.5)
    # Snapshots forgotten along the way are gone on purpose; every one left must be whole.
    out = repo.run("check", "--read-data")
    if out.returncode != 0:
        tally.checks_failed.append(f"prune/{kind} final read-data check: {out.stdout.strip()[-300:]}")
    verify_all(repo, expected, work, tally, f"prune/{kind}")


def flip_campaign(flips: int, work: Path, rng: random.Random, tally: Tally):
    repo = Repo("fs", work, "flips")
    src = work / "src-flips"
    repo.run("repo", "init", "--pack-size-mib", "1", check=True)
    expected = {}
    for _ in range(3):
        mutate(src, rng)
        out = repo.run("backup", "--json", str(src), check=True)
        expected[json.loads(out.stdout.strip().splitlines()[-1])["snapshot_id"]] = tree_digest(src)
    latest = list(expected)[-1]
    objects = [p for p in repo.path.rglob("*") if p.is_file() and p.relative_to(repo.path).parts[0] in
               ("data", "index", "snapshots", "config")]
    for n in range(flips):
        victim = rng.choice(objects)
        data = bytearray(victim.read_bytes())
        if not data:
            continue
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        original = victim.read_bytes()
        victim.write_bytes(data)
        tally.flips += 1
        out = repo.run("check", "--read-data")
        if out.returncode != 0:
            tally.detected += 1
        # Whatever the damage, a restore gives the backed-up bytes or fails; every tenth flip.
        if n % 10 == 0:
            got = restored_digest(repo, latest, work, str(src))
            if got is not None and got != expected[latest]:
                tally.wrong.append(f"flip in {victim.relative_to(repo.path)} at {at}: restore gave other bytes")
        victim.write_bytes(original)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200, help="kill -9 points in all (half on fs, half on S3)")
    parser.add_argument("--prune-minutes", type=float, default=10, help="length of the prune loop, per target")
    parser.add_argument("--flips", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--only", choices=["kills", "prune", "flips"])
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tally = Tally()
    kinds = ["fs", "s3"] if os.environ.get("ARCA_TEST_S3_ENDPOINT") else ["fs"]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="arca-safety-") as tmp:
        work = Path(tmp)
        if args.only in (None, "kills"):
            for kind in kinds:
                kill_campaign(kind, args.kills // len(kinds), work, rng, tally)
        if args.only in (None, "prune"):
            for kind in kinds:
                prune_campaign(kind, args.prune_minutes / len(kinds), work, rng, tally)
        if args.only in (None, "flips"):
            flip_campaign(args.flips, work, rng, tally)
    minutes = (time.monotonic() - started) / 60
    print(f"seed {args.seed}, targets {', '.join(kinds)}, {minutes:.1f} min, arca {ARCA}")
    print()
    print("| kills | checks failed after a kill | concurrent backups ok / refused (pauses past the lease, prunes) "
          "| flips | detected | restores byte-identical | data lost | silent wrong restores |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {tally.kills} | {len(tally.checks_failed)} | {tally.backups_ok} / {tally.backups_refused} "
          f"({tally.pauses}, {tally.prunes}) | {tally.flips} | {tally.detected} | {tally.identical} of {tally.restores} "
          f"| {len(tally.lost)} | {len(tally.wrong)} |")
    for line in tally.checks_failed + tally.lost + tally.wrong:
        print(f"- {line}", file=sys.stderr)
    undetected = tally.flips - tally.detected
    if undetected:
        print(f"- {undetected} flip(s) not detected by check --read-data", file=sys.stderr)
    sys.exit(1 if tally.lost or tally.wrong or tally.checks_failed or undetected else 0)


if __name__ == "__main__":
    main()
