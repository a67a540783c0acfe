//! Changed-block tracking for a raw disk image that a running qemu (a VM, or
//! `qemu-storage-daemon`) has open: instead of reading the whole image to find what changed,
//! each pass asks qemu through its QMP monitor which blocks were written since the last pass,
//! as Proxmox and libvirt do for incremental backups.
//!
//! A pass rotates dirty bitmaps in one QMP transaction (a new one starts recording, the one of
//! the pass stops), reads the stopped bitmap's extents over NBD (`NBD_CMD_BLOCK_STATUS` on the
//! meta context `qemu:dirty-bitmap:<name>`), copies those ranges from the image file into the
//! mirror and syncs it. A pass that fails merges its bitmap back into the recording one, so no
//! change is forgotten. Writes during a pass land in the new bitmap and go with the next one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::follow::Replicator;
use crate::mirror::{Mirror, SyncStats};
use crate::nbd;

/// The most copied per read and write.
const PIECE: u64 = 4 << 20;

/// The longest qemu may take to answer a monitor command.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often qemu is asked whether its bitmap marks anything, between notifications.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// A free monitor greets at once.
const GREETING_TIMEOUT: Duration = Duration::from_secs(5);

/// Where qemu has the image open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuDisk {
    /// The QMP monitor socket of the qemu process. A monitor serves one client at a time, so
    /// this is one for Arca alone (qemu takes several `-qmp` / `--monitor` options).
    pub monitor: PathBuf,
    /// The block node (`node-name`) of the image: a raw image file.
    pub node: String,
    /// The socket of an NBD server already running in that qemu. Without it, one is started
    /// (a qemu runs at most one NBD server).
    pub nbd: Option<PathBuf>,
}

/// The longest line read from a monitor.
const MAX_LINE: u64 = 16 << 20;

/// A QMP monitor connection. Commands carry ids, so a late answer to an earlier command that
/// timed out is never taken for this one's; after an I/O error the connection is not used.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    broken: bool,
}

impl Qmp {
    fn connect(socket: &Path) -> io::Result<Qmp> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| io::Error::new(e.kind(), format!("connect to qemu's monitor {}: {e}", socket.display())))?;
        stream.set_read_timeout(Some(GREETING_TIMEOUT))?;
        let mut qmp = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream, next_id: 0, broken: false };
        // A monitor serves one client at a time: a busy one never greets.
        let greeting = qmp.message().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("qemu's monitor {} did not answer (is another client using it?): {e}", socket.display()),
            )
        })?;
        if greeting.get("QMP").is_none() {
            return Err(io::Error::other(format!("{} is not a QMP monitor", socket.display())));
        }
        qmp.writer.set_read_timeout(Some(QMP_TIMEOUT))?;
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn message(&mut self) -> io::Result<Value> {
        let mut line = String::new();
        if (&mut self.reader).take(MAX_LINE).read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "qemu closed its monitor"));
        }
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("QMP: {e}")))
    }

    /// Runs `command`; qemu's refusal is an error carrying its reason.
    fn execute(&mut self, command: &str, arguments: Value) -> io::Result<Value> {
        if self.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the connection to qemu's monitor failed earlier"));
        }
        let answer = self.exchange(command, arguments);
        if answer.as_ref().is_err_and(|e| e.kind() != io::ErrorKind::Other) {
            self.broken = true;
        }
        answer
    }

    fn exchange(&mut self, command: &str, arguments: Value) -> io::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = serde_json::to_vec(&json!({"execute": command, "arguments": arguments, "id": id}))?;
        request.push(b'\n');
        self.writer.write_all(&request)?;
        loop {
            let mut reply = self.message()?;
            // Events carry no id; answers to earlier commands carry theirs.
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(value) = reply.get_mut("return") {
                return Ok(value.take());
            }
            let reason = reply.pointer("/error/desc").and_then(Value::as_str).unwrap_or("no reason given");
            return Err(io::Error::other(format!("qemu refused {command}: {reason}")));
        }
    }
}

struct State {
    qmp: Qmp,
    /// The bitmap recording now is `<name>-<generation>`.
    generation: u64,
    /// The first full copy is done.
    synced: bool,
    /// Bitmaps of finished passes that qemu still held (an export closing).
    leftover: Vec<String>,
}

/// A [`Mirror`] of a single image kept in step through qemu's dirty bitmaps.
pub struct Tracked {
    mirror: Mirror,
    disk: QemuDisk,
    /// Prefix of this follower's bitmaps and exports (unique per replica).
    name: String,
    nbd: PathBuf,
    /// The NBD server was started by us (and is stopped when done).
    own_server: bool,
    state: Mutex<State>,
}

impl Tracked {
    /// Prepares to follow `mirror`'s source, an image qemu has open as `disk`. `name` tells
    /// this follower's bitmaps and exports apart from others' (letters, digits and `-`,
    /// starting with a letter); any left by an earlier run of the same name are removed.
    pub fn open(mirror: Mirror, disk: QemuDisk, name: &str) -> io::Result<Tracked> {
        let mut qmp = Qmp::connect(&disk.monitor)?;
        check_node(&mut qmp, &disk.node, mirror.source())?;
        let prefix = format!("{name}-");
        if let Some(exports) = qmp.execute("query-block-exports", json!({}))?.as_array() {
            for id in exports.iter().filter_map(|e| e.get("id").and_then(Value::as_str)) {
                if id.starts_with(&prefix) {
                    qmp.execute("block-export-del", json!({"id": id, "mode": "hard"}))?;
                }
            }
        }
        let leftover = bitmaps(&mut qmp, &disk.node)?.into_iter().filter(|b| b.starts_with(&prefix)).collect();
        let (nbd, own_server) = match &disk.nbd {
            Some(socket) => (socket.clone(), false),
            None => {
                // Beside the monitor: where qemu may create sockets, inside the tenant's folder
                // when the monitor is, and found again after a crash of ours.
                let socket = disk.monitor.with_file_name(format!("{name}.nbd"));
                let started = qmp.execute(
                    "nbd-server-start",
                    json!({"addr": {"type": "unix", "data": {"path": socket.to_string_lossy()}}}),
                );
                match started {
                    Ok(_) => (socket, true),
                    // Started by an earlier run of ours that ended without stopping it.
                    Err(_) if socket.exists() => (socket, false),
                    Err(e) => {
                        return Err(io::Error::other(format!(
                            "{e}; if it runs an NBD server already, name that server's socket"
                        )));
                    }
                }
            }
        };
        let state = State { qmp, generation: 0, synced: false, leftover };
        Ok(Tracked { mirror, disk, name: name.to_owned(), nbd, own_server, state: Mutex::new(state) })
    }

    fn bitmap(&self, generation: u64) -> String {
        format!("{}-{generation}", self.name)
    }

    /// Removes bitmaps of earlier passes, keeping those qemu still holds for later.
    fn remove_leftovers(&self, state: &mut State) {
        let node = &self.disk.node;
        let leftover = std::mem::take(&mut state.leftover);
        for bitmap in leftover {
            if state.qmp.execute("block-dirty-bitmap-remove", json!({"node": node, "name": bitmap})).is_err() {
                state.leftover.push(bitmap);
            }
        }
    }

    /// The first copy (and the one after a pass whose changes could not be kept): a bitmap
    /// starts recording, then every block of the image is compared with the mirror's own bytes
    /// and the differing ones written, so changes during the copy go with the next pass.
    fn first_copy(&self, state: &mut State) -> io::Result<SyncStats> {
        if state.generation > 0 {
            let earlier = self.bitmap(state.generation);
            state.leftover.push(earlier);
        }
        self.remove_leftovers(state);
        let node = &self.disk.node;
        state.generation += 1;
        state.qmp.execute("block-dirty-bitmap-add", json!({"node": node, "name": self.bitmap(state.generation)}))?;
        self.mirror.forget_all();
        let stats = self.mirror.sync_paths([self.mirror.source()])?;
        state.synced = true;
        Ok(stats)
    }

    fn pass(&self, state: &mut State) -> io::Result<SyncStats> {
        let node = &self.disk.node;
        // The time before the rotation (no later than any change the pass carries), the length
        // after it (a resize the pass's bitmap covers).
        let modified = fs::metadata(self.mirror.source())?.modified()?;
        let (done, next) = (self.bitmap(state.generation), self.bitmap(state.generation + 1));
        state.qmp.execute(
            "transaction",
            json!({"actions": [
                {"type": "block-dirty-bitmap-add", "data": {"node": node, "name": next}},
                {"type": "block-dirty-bitmap-disable", "data": {"node": node, "name": done}},
            ]}),
        )?;
        state.generation += 1;
        let copied = self
            .dirty_extents(state, &done)
            .and_then(|extents| self.copy(&extents, fs::metadata(self.mirror.source())?.len(), modified));
        if copied.is_err() && !self.merge_back(state, &done, &next) {
            // Its changes are in no bitmap now: the next pass compares everything.
            state.synced = false;
        }
        state.leftover.push(done);
        self.remove_leftovers(state);
        copied
    }

    /// Puts a failed pass's bitmap `done` back into the recording one, so its changes go with
    /// the next pass. qemu holds `done` until its export has closed: tries for a second.
    fn merge_back(&self, state: &mut State, done: &str, next: &str) -> bool {
        let merge = json!({"node": self.disk.node, "target": next, "bitmaps": [done]});
        for _ in 0..50 {
            if state.qmp.execute("block-dirty-bitmap-merge", merge.clone()).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The extents `bitmap` marks dirty, read through a short-lived NBD export.
    fn dirty_extents(&self, state: &mut State, bitmap: &str) -> io::Result<Vec<(u64, u64)>> {
        state.qmp.execute(
            "block-export-add",
            json!({"type": "nbd", "id": bitmap, "node-name": self.disk.node, "name": bitmap, "bitmaps": [bitmap]}),
        )?;
        let context = format!("qemu:dirty-bitmap:{bitmap}");
        let extents = nbd::Client::connect(&self.nbd, bitmap, Some(&context)).and_then(|mut c| c.dirty_extents());
        let closed = state.qmp.execute("block-export-del", json!({"id": bitmap, "mode": "hard"}));
        let extents = extents?;
        closed?;
        Ok(extents)
    }

    /// Copies `extents` of the image (now `size` bytes, last written at `modified`) into the
    /// mirror and makes them durable.
    fn copy(&self, extents: &[(u64, u64)], size: u64, modified: SystemTime) -> io::Result<SyncStats> {
        let dest = OpenOptions::new().write(true).open(self.mirror.dest())?;
        let resized = dest.metadata()?.len() != size;
        if extents.is_empty() && !resized {
            return Ok(SyncStats::default());
        }
        let image = File::open(self.mirror.source())?;
        let mut buffer = vec![0u8; PIECE as usize];
        let mut copied = 0u64;
        for &(start, length) in extents {
            let end = (start + length).min(size);
            let mut offset = start;
            while offset < end {
                let take = (end - offset).min(PIECE) as usize;
                image.read_exact_at(&mut buffer[..take], offset)?;
                dest.write_all_at(&buffer[..take], offset)?;
                offset += take as u64;
                copied += take as u64;
            }
        }
        if resized {
            dest.set_len(size)?;
        }
        dest.sync_data()?;
        // The time after the data: a crash may lose it, never the data it vouches for (a
        // mirror started again compares a file whose time differs).
        dest.set_modified(modified)?;
        Ok(SyncStats { files: 1, bytes_written: copied, bytes_read: copied, removed: 0, oldest_change: Some(modified) })
    }
}

impl Replicator for Tracked {
    fn source(&self) -> &Path {
        self.mirror.source()
    }

    /// A pass copies only what qemu marked: the next one may start at once.
    fn hold_between_passes(&self) -> bool {
        false
    }

    /// qemu's native AIO writes raise no file-system notification: its bitmap is asked too.
    fn poll_every(&self) -> Option<Duration> {
        Some(POLL_EVERY)
    }

    fn poll(&self) -> io::Result<bool> {
        let mut state = self.state.lock().expect("tracking state");
        if !state.synced {
            return Ok(false);
        }
        let recording = self.bitmap(state.generation);
        Ok(dirty_bytes(&mut state.qmp, &self.disk.node, &recording)? > 0)
    }

    /// The first call (and the one after a pass whose changes could not be kept) compares the
    /// whole image; later ones, rescans included, copy what qemu marked.
    fn sync_all(&self) -> io::Result<SyncStats> {
        let mut state = self.state.lock().expect("tracking state");
        if state.synced { self.pass(&mut state) } else { self.first_copy(&mut state) }
    }

    /// qemu's bitmap, not the paths notified, says what changed.
    fn sync_paths(&self, _: &mut dyn Iterator<Item = &Path>) -> io::Result<SyncStats> {
        Replicator::sync_all(self)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let state = self.state.get_mut().expect("tracking state");
        state.leftover.push(format!("{}-{}", self.name, state.generation));
        let leftover = std::mem::take(&mut state.leftover);
        for bitmap in leftover {
            let _ = state.qmp.execute("block-dirty-bitmap-remove", json!({"node": self.disk.node, "name": bitmap}));
        }
        if self.own_server {
            let _ = state.qmp.execute("nbd-server-stop", json!({}));
            let _ = fs::remove_file(&self.nbd);
        }
    }
}

/// What qemu says of block node `node` (`query-named-block-nodes`), if it has one.
fn node_info(qmp: &mut Qmp, node: &str) -> io::Result<Option<Value>> {
    let nodes = qmp.execute("query-named-block-nodes", json!({"flat": true}))?;
    let Value::Array(nodes) = nodes else { return Ok(None) };
    Ok(nodes.into_iter().find(|n| n.get("node-name").and_then(Value::as_str) == Some(node)))
}

/// The dirty bitmaps in a node's [`node_info`].
fn bitmaps_of(info: &Value) -> impl Iterator<Item = &Value> {
    info.get("dirty-bitmaps").and_then(Value::as_array).into_iter().flatten()
}

fn bitmap_name(bitmap: &Value) -> Option<&str> {
    bitmap.get("name").and_then(Value::as_str)
}

/// How many bytes `bitmap` on `node` marks as written.
fn dirty_bytes(qmp: &mut Qmp, node: &str, bitmap: &str) -> io::Result<u64> {
    let info = node_info(qmp, node)?.unwrap_or_default();
    let found = bitmaps_of(&info).find(|b| bitmap_name(b) == Some(bitmap));
    Ok(found.and_then(|b| b.get("count")).and_then(Value::as_u64).unwrap_or(0))
}

/// The names of `node`'s dirty bitmaps.
fn bitmaps(qmp: &mut Qmp, node: &str) -> io::Result<Vec<String>> {
    let info = node_info(qmp, node)?.unwrap_or_default();
    Ok(bitmaps_of(&info).filter_map(bitmap_name).map(str::to_owned).collect())
}

/// `node` must be the raw image at `image`: the offsets qemu reports are then the file's.
fn check_node(qmp: &mut Qmp, node: &str, image: &Path) -> io::Result<()> {
    let found = node_info(qmp, node)?.ok_or_else(|| io::Error::other(format!("qemu has no block node {node}")))?;
    let driver = found.get("drv").and_then(Value::as_str).unwrap_or_default();
    if !matches!(driver, "file" | "raw") {
        return Err(io::Error::other(format!(
            "block node {node} is a {driver} image; changed blocks are tracked for raw images only"
        )));
    }
    let file = found.pointer("/image/filename").and_then(Value::as_str).unwrap_or_default();
    let same = |a: &Path, b: &Path| fs::canonicalize(a).ok().is_some_and(|a| fs::canonicalize(b).is_ok_and(|b| a == b));
    if !same(Path::new(file), image) {
        return Err(io::Error::other(format!(
            "block node {node} is {file}, not the replicated image {}",
            image.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant};

    use arca_testkit::{DaemonOptions, StorageDaemon};

    use super::*;
    use crate::follow::{Behind, FollowSettings, follow};

    const SIZE: usize = 8 << 20;

    /// qemu holding `image` open as node `drive0` (a `format` layer over the file), with native
    /// AIO and O_DIRECT as VMs often run; with `nbd`, the guest's writes come over NBD.
    fn daemon(dir: &Path, image: &Path, format: &str, nbd: bool) -> StorageDaemon {
        StorageDaemon::start(dir, image, DaemonOptions { format: Some(format), native_aio: true, nbd })
    }

    /// A raw image of [`pattern`]`(seed)` open in qemu, and where its mirror goes.
    fn raw_image(seed: u8, nbd: bool) -> (tempfile::TempDir, PathBuf, PathBuf, StorageDaemon) {
        let dir = tempfile::tempdir().unwrap();
        let (image, dest) = (dir.path().join("disk.raw"), dir.path().join("replica/disk.raw"));
        std::fs::write(&image, pattern(seed)).unwrap();
        let daemon = daemon(dir.path(), &image, "raw", nbd);
        (dir, image, dest, daemon)
    }

    fn disk(daemon: &StorageDaemon) -> QemuDisk {
        QemuDisk { monitor: daemon.monitor(), node: "drive0".into(), nbd: Some(daemon.nbd()) }
    }

    /// Stops a follower when the test ends, passing or not (a scope waits for its threads).
    struct StopOnDrop<'a>(&'a AtomicBool);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn pattern(seed: u8) -> Vec<u8> {
        (0..SIZE).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[test]
    fn a_pass_copies_only_the_blocks_the_guest_wrote_and_the_mirror_converges() {
        let (_dir, image, dest, daemon) = raw_image(0, true);
        let tracked = Tracked::open(Mirror::new(&image, &dest), disk(&daemon), "arca-test").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (passes, passed) = mpsc::channel();
        std::thread::scope(|scope| {
            let _stop_on_panic = StopOnDrop(&stop);
            let (tracked, stop_flag) = (&tracked, &stop);
            let follower = scope.spawn(move || {
                follow(tracked, &FollowSettings::default(), stop_flag, &Behind::default(), |pass| {
                    passes.send(pass.clone()).is_ok()
                })
            });
            let first = passed.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(first.full);
            assert_eq!(std::fs::read(&dest).unwrap(), pattern(0));

            // The guest writes 4 KiB in two places and once across a 64 KiB boundary.
            let mut guest = nbd::Client::connect(&daemon.nbd(), "vm", None).unwrap();
            assert_eq!(guest.size(), SIZE as u64);
            for (offset, byte) in [(4096u64, 0xa1u8), (5 << 20, 0xb2), ((1 << 16) - 2048, 0xc3)] {
                guest.write_at(offset, &[byte; 4096]).unwrap();
            }
            guest.flush().unwrap();
            // (Reading the image raises notifications all along: the poll must still run.)
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read(&dest).unwrap() != std::fs::read(&image).unwrap() {
                assert!(Instant::now() < deadline, "the mirror never converged");
                std::thread::sleep(Duration::from_millis(5));
            }
            // Bitmaps track 64 KiB clusters: three of them changed, out of 128.
            // (Idle passes come every tenth of a second: take what came in the next 300 ms.)
            let mut read = 0;
            let drained = Instant::now() + Duration::from_millis(300);
            while let Ok(pass) = passed.recv_timeout(drained.saturating_duration_since(Instant::now())) {
                read += pass.stats.bytes_read;
            }
            assert!(read > 0 && read <= 3 << 16, "read {read} bytes for three small writes");

            // A pass with nothing written copies nothing.
            assert!(!tracked.sync_all().unwrap().changed());
            stop_flag.store(true, Ordering::Relaxed);
            follower.join().unwrap().unwrap();
        });
        drop(tracked);
        let mut qmp = Qmp::connect(&daemon.test_monitor()).unwrap();
        assert_eq!(bitmaps(&mut qmp, "drive0").unwrap(), Vec::<String>::new(), "its bitmaps are removed when done");
    }

    #[test]
    fn a_follower_started_again_finds_no_stale_bitmaps_and_starts_its_own_nbd_server() {
        let (_dir, image, dest, daemon) = raw_image(1, false);
        let disk = QemuDisk { nbd: None, ..disk(&daemon) };
        let mut qmp = Qmp::connect(&disk.monitor).unwrap();
        qmp.execute("block-dirty-bitmap-add", json!({"node": "drive0", "name": "arca-again-7"})).unwrap();
        drop(qmp);
        let tracked = Tracked::open(Mirror::new(&image, &dest), disk.clone(), "arca-again").unwrap();
        tracked.sync_all().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), pattern(1));
        assert!(!tracked.sync_all().unwrap().changed(), "no writes, nothing to copy (through its own NBD server)");
        let busy = Tracked::open(Mirror::new(&image, &dest), disk.clone(), "arca-busy");
        assert!(busy.err().expect("the monitor is taken").to_string().contains("another client"));
        drop(tracked);
        let mut qmp = Qmp::connect(&disk.monitor).unwrap();
        assert_eq!(bitmaps(&mut qmp, "drive0").unwrap(), Vec::<String>::new(), "the stale bitmap and its own are gone");
    }

    #[test]
    fn a_pass_that_fails_leaves_its_changes_for_the_next() {
        let (dir, image, dest, daemon) = raw_image(2, true);
        let tracked = Tracked::open(Mirror::new(&image, &dest), disk(&daemon), "arca-retry").unwrap();
        tracked.sync_all().unwrap();
        let mut guest = nbd::Client::connect(&daemon.nbd(), "vm", None).unwrap();
        guest.write_at(1 << 20, &[0xd4; 4096]).unwrap();
        guest.flush().unwrap();
        // The mirror cannot be written: the pass fails, and its bitmap goes back to qemu's.
        let aside = dir.path().join("aside.raw");
        std::fs::rename(&dest, &aside).unwrap();
        std::fs::create_dir(&dest).unwrap();
        assert!(tracked.sync_all().is_err());
        std::fs::remove_dir(&dest).unwrap();
        std::fs::rename(&aside, &dest).unwrap();
        let stats = tracked.sync_all().unwrap();
        assert!(stats.changed() && stats.bytes_read <= 1 << 16, "{stats:?}");
        assert!(std::fs::read(&dest).unwrap() == std::fs::read(&image).unwrap());
    }

    #[test]
    fn an_image_qemu_does_not_have_open_as_raw_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        let made = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&image).arg("8M").status();
        assert!(made.unwrap().success());
        let daemon = daemon(dir.path(), &image, "qcow2", false);
        let mirror = || Mirror::new(&image, dir.path().join("replica/disk.qcow2"));
        let error = Tracked::open(mirror(), disk(&daemon), "arca-x").err().expect("a qcow2 image is refused");
        assert!(error.to_string().contains("raw images only"), "{error}");
        let other = QemuDisk { node: "nothing".into(), ..disk(&daemon) };
        let error = Tracked::open(mirror(), other, "arca-x").err().expect("an unknown node is refused");
        assert!(error.to_string().contains("no block node nothing"), "{error}");
        let elsewhere = Mirror::new(dir.path().join("other.raw"), dir.path().join("replica/other.raw"));
        std::fs::write(dir.path().join("other.raw"), b"x").unwrap();
        let error = Tracked::open(elsewhere, QemuDisk { node: "file0".into(), ..disk(&daemon) }, "arca-x")
            .err()
            .expect("another file is refused");
        assert!(error.to_string().contains("not the replicated image"), "{error}");
    }
}
