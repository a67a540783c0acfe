//! Leases in the repository (`locks/`), so standalone processes coordinate without a
//! server: backups take shared leases, prune an exclusive one. A lease is refreshed
//! while its holder works; one not refreshed for [`STALE_AFTER`] belongs to a dead
//! process and is ignored.
//!
//! Leases are a courtesy: they keep prune from running beside a backup in the usual case,
//! but nothing depends on them for safety (a paused holder loses its lease; see [`crate::gc`]
//! for what keeps data safe). A holder is named by a random instance id. Its process id
//! only ever speeds up recovery after a crash: a lease is taken for dead before it goes stale
//! only when it was written on this host, in this boot and in this PID namespace by a
//! process that no longer exists — never from another container that shares the host name.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::LockFile;
use crate::repository::{Repository, paths};
use crate::ticker::Ticker;

/// A lease older than this without a refresh is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(120);
const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// A held lease; dropping it removes it from the repository.
pub struct Lease {
    repo: Repository,
    name: String,
    refresher: Option<Ticker>,
}

fn stale_after() -> chrono::Duration {
    // Tests shorten this to exercise stale leases without waiting minutes.
    let secs = std::env::var("ARCA_LOCK_STALE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(STALE_AFTER.as_secs());
    chrono::Duration::seconds(secs as i64)
}

/// The live (not stale) leases in the repository, by name.
pub fn live_leases(repo: &Repository) -> Result<Vec<(String, LockFile)>> {
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for listed in repo.backend().list(paths::LOCKS)? {
        let name = format!("{}{}", paths::LOCKS, listed.name);
        let lock: LockFile = match repo.load_object(&name).and_then(|b| crate::format::from_json(&b, &name)) {
            Ok(lock) => lock,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if now - lock.refreshed < stale_after() && !holder_is_gone(&lock) {
            out.push((name, lock));
        }
    }
    Ok(out)
}

/// A lease written in this very process table (same host, boot and PID namespace) by a
/// process that no longer exists was left by a crash.
fn holder_is_gone(lock: &LockFile) -> bool {
    let table = ProcessTable { boot_id: lock.boot_id.clone(), pid_namespace: lock.pid_namespace.clone() };
    process_is_gone(&lock.hostname, &table, lock.pid)
}

/// Whether process `pid` of `table` on `hostname` is known to have ended: only when that is
/// this very process table (same host, boot and PID namespace) and it has no such process.
pub(crate) fn process_is_gone(hostname: &str, table: &ProcessTable, pid: u32) -> bool {
    let here = ProcessTable::current();
    !here.boot_id.is_empty()
        && !here.pid_namespace.is_empty()
        && hostname == gethostname::gethostname().to_string_lossy()
        && table.boot_id == here.boot_id
        && table.pid_namespace == here.pid_namespace
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Which process table a process id belongs to.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProcessTable {
    pub(crate) boot_id: String,
    pub(crate) pid_namespace: String,
}

impl ProcessTable {
    pub(crate) fn current() -> ProcessTable {
        ProcessTable {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// This process's random instance id, written into its leases and sweep records.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut id = [0u8; 8];
        crate::crypto::random_bytes(&mut id);
        hex::encode(id)
    })
}

/// Removes leases that are stale; returns how many.
pub fn remove_stale_leases(repo: &Repository) -> Result<usize> {
    let live: std::collections::HashSet<String> = live_leases(repo)?.into_iter().map(|(n, _)| n).collect();
    let mut removed = 0;
    for listed in repo.backend().list(paths::LOCKS)? {
        let name = format!("{}{}", paths::LOCKS, listed.name);
        if !live.contains(&name) {
            repo.backend().delete(&name)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn describe(lock: &LockFile) -> String {
    format!(
        "{} by instance {} (pid {}) on {} since {}",
        lock.operation,
        if lock.instance.is_empty() { "?" } else { &lock.instance },
        lock.pid,
        lock.hostname,
        lock.created.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

impl Lease {
    /// Takes a lease. A shared lease fails while an exclusive one is live; an exclusive
    /// lease fails while any other is live. Both sides check after writing their own, so
    /// two racing writers cannot both proceed.
    pub fn acquire(repo: &Repository, exclusive: bool, operation: &str) -> Result<Lease> {
        let now = chrono::Utc::now();
        let table = ProcessTable::current();
        let lock = LockFile {
            exclusive,
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            instance: instance_id().to_string(),
            boot_id: table.boot_id,
            pid_namespace: table.pid_namespace,
            pid: std::process::id(),
            operation: operation.to_string(),
            created: now,
            refreshed: now,
        };
        let mut id = [0u8; 16];
        crate::crypto::random_bytes(&mut id);
        let name = format!("{}{}", paths::LOCKS, hex::encode(id));
        write_lock(repo, &name, &lock)?;
        let mut lease = Lease { repo: repo.clone(), name, refresher: None };
        for (other_name, other) in live_leases(repo)? {
            if other_name != lease.name && (exclusive || other.exclusive) {
                return Err(Error::Locked(describe(&other)));
            }
        }
        lease.start_refresher(lock);
        Ok(lease)
    }

    fn start_refresher(&mut self, mut lock: LockFile) {
        let (repo, name) = (self.repo.clone(), self.name.clone());
        self.refresher = Some(Ticker::every(REFRESH_EVERY, "arca-lease", move || {
            lock.refreshed = chrono::Utc::now();
            if let Err(e) = write_lock(&repo, &name, &lock) {
                tracing::warn!("cannot refresh lease {name}: {e}");
            }
        }));
    }
}

fn write_lock(repo: &Repository, name: &str, lock: &LockFile) -> Result<()> {
    let plain = serde_json::to_vec(lock).expect("lock serializes");
    repo.backend().write(name, repo.data_key().seal(0, &plain))
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.refresher.take());
        if let Err(e) = self.repo.backend().delete(&self.name) {
            tracing::warn!("cannot remove lease {}: {e}", self.name);
        }
    }
}
