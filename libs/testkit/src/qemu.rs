//! `qemu-storage-daemon` (from qemu-utils) holding a disk image open, as a VM would: the
//! writer of images whose changed blocks replicas ask qemu for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::Guarded;

/// How the daemon opens its image.
#[derive(Clone, Copy, Debug, Default)]
pub struct DaemonOptions<'a> {
    /// A format driver (`raw`, `qcow2`) over the file node `file0`; `None`: the file node
    /// itself is the disk.
    pub format: Option<&'a str>,
    /// Native AIO with O_DIRECT (`aio=native,cache.direct=on`), as VMs often run: its writes
    /// raise no inotify event. Otherwise qemu's default thread pool.
    pub native_aio: bool,
    /// An NBD server at `nbd.sock` exporting the disk writable as `vm` (the guest's writes
    /// come through it).
    pub nbd: bool,
}

/// A running `qemu-storage-daemon` with its image as node `drive0`, and two QMP monitors: one
/// for the code under test, one for the test (a monitor serves one client at a time).
pub struct StorageDaemon {
    dir: PathBuf,
    _process: Guarded,
}

impl StorageDaemon {
    /// Starts one with its sockets in `dir`; panics when it does not start.
    pub fn start(dir: &Path, image: &Path, options: DaemonOptions<'_>) -> StorageDaemon {
        let aio = if options.native_aio { ",aio=native,cache.direct=on" } else { "" };
        let file_node = if options.format.is_some() { "file0" } else { "drive0" };
        let mut args = vec![
            "--blockdev".to_owned(),
            format!("driver=file,filename={},node-name={file_node}{aio}", image.display()),
        ];
        if let Some(format) = options.format {
            args.extend(["--blockdev".to_owned(), format!("driver={format},file=file0,node-name=drive0")]);
        }
        for (id, socket) in [("qmp0", "qmp.sock"), ("qmp1", "test.sock")] {
            args.extend([
                "--chardev".to_owned(),
                format!("socket,path={},server=on,wait=off,id={id}", dir.join(socket).display()),
                "--monitor".to_owned(),
                format!("chardev={id}"),
            ]);
        }
        if options.nbd {
            args.extend([
                "--nbd-server".to_owned(),
                format!("addr.type=unix,addr.path={}", dir.join("nbd.sock").display()),
                "--export".to_owned(),
                "type=nbd,id=vm,node-name=drive0,name=vm,writable=on".to_owned(),
            ]);
        }
        let mut process =
            Guarded::spawn(Path::new("qemu-storage-daemon"), &args, &dir.join("qemu-storage-daemon.log"), None);
        let ready = || {
            ["qmp.sock", "test.sock"].iter().all(|s| dir.join(s).exists())
                && (!options.nbd || dir.join("nbd.sock").exists())
        };
        if let Err(e) = process.wait_ready(Duration::from_secs(10), ready) {
            panic!("testkit: qemu-storage-daemon (qemu-utils) {e}");
        }
        StorageDaemon { dir: dir.to_path_buf(), _process: process }
    }

    /// The monitor for the code under test.
    pub fn monitor(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The monitor for the test itself.
    pub fn test_monitor(&self) -> PathBuf {
        self.dir.join("test.sock")
    }

    /// The NBD server's socket (with [`DaemonOptions::nbd`]).
    pub fn nbd(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }
}
