//! Spawning servers that cannot outlive the test process.
//!
//! Each server runs under a small `sh` watchdog whose stdin is a pipe from the
//! test process. The kernel closes that pipe when the test process ends, for
//! whatever reason (normal exit, panic, SIGKILL from a nextest timeout), and the
//! watchdog then kills the server. This needs no `unsafe` (unlike
//! `PR_SET_PDEATHSIG`, which also fires when merely the spawning *thread* ends)
//! and no polling. Dropping a [`Guarded`] closes the pipe early: that is how a
//! per-test server is stopped.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// `sh -c WATCHDOG sh SERVER ARGS...`. Fd 3 keeps the pipe, since a background
/// job's stdin is /dev/null. `wait` returns when the server exits, on its own or
/// killed by the watcher; the watchdog then exits with the server's status, so
/// `try_wait` on the watchdog tells whether the server still runs.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null 3<&- &
server=$!
{ read _ <&3; kill -KILL "$server" 2>/dev/null; } &
watcher=$!
wait "$server"
status=$?
kill "$watcher" 2>/dev/null
if [ -n "$ARCA_TESTKIT_CLEANUP" ]; then rm -rf "$ARCA_TESTKIT_CLEANUP"; fi
exit "$status"
"#;

/// A server process under the watchdog.
pub(crate) struct Guarded {
    watchdog: Child,
    pipe: Option<ChildStdin>,
    log: PathBuf,
}

impl Guarded {
    /// Starts `program args` with stdout and stderr to `log`. When it has ended,
    /// the watchdog removes `cleanup_dir` if given (for servers that live as long
    /// as the process, whose temp dir no destructor would remove).
    pub fn spawn(program: &Path, args: &[String], log: &Path, cleanup_dir: Option<&Path>) -> Guarded {
        let out = File::create(log).unwrap_or_else(|e| panic!("testkit: create {}: {e}", log.display()));
        let err = out.try_clone().expect("testkit: dup log file");
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .env("ARCA_TESTKIT_CLEANUP", cleanup_dir.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("testkit: spawn {}: {e}", program.display()));
        let pipe = watchdog.stdin.take();
        Guarded { watchdog, pipe, log: log.to_path_buf() }
    }

    /// Polls `ready` every 20 ms until it returns true. When the server exits
    /// first or `timeout` passes, stops it and returns the end of its log: the
    /// caller may retry, for example on another port.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            let exited = matches!(self.watchdog.try_wait(), Ok(Some(_)));
            if exited || start.elapsed() > timeout {
                // Read the log before stopping: the watchdog may remove its directory.
                let log = self.log_tail();
                self.stop();
                let why = if exited { "exited" } else { "did not get ready in time" };
                return Err(format!("{why}; its log ends:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the server's log.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        let _ = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kills the server and waits until it is gone.
    pub fn stop(&mut self) {
        drop(self.pipe.take());
        let _ = self.watchdog.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago. Another process may take it
/// before the server binds it, so callers retry on failure.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("testkit: bind an ephemeral loopback port")
}

/// Finds a tool: `$ARCA_TOOLS_DIR/bin` (default `~/.cache/arca/tools/bin`, where
/// `infra/dev/ensure-tools.sh` installs the pinned versions), then `PATH`.
pub(crate) fn find_tool(name: &str) -> PathBuf {
    let tools_dir = std::env::var_os("ARCA_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/arca/tools")));
    let pinned = tools_dir.map(|d| d.join("bin").join(name));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    pinned
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("testkit: `{name}` not found; run infra/dev/ensure-tools.sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_exits_reports_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let cleanup = dir.path().join("data");
        std::fs::create_dir(&cleanup).unwrap();
        let args = ["-c".to_string(), "echo boom >&2; exit 3".to_string()];
        let mut server = Guarded::spawn(Path::new("/bin/sh"), &args, &dir.path().join("log"), Some(&cleanup));
        let error = server.wait_ready(Duration::from_secs(10), || false).unwrap_err();
        assert!(error.starts_with("exited") && error.contains("boom"), "{error}");
        assert!(!cleanup.exists(), "the watchdog removes the data dir");
    }

    #[test]
    fn dropping_kills_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The server writes its own pid, then would sleep for 10 minutes.
        let script = format!("echo $$ > {}; exec sleep 600", pid_file.display());
        let mut server =
            Guarded::spawn(Path::new("/bin/sh"), &["-c".to_string(), script], &dir.path().join("log"), None);
        server
            .wait_ready(Duration::from_secs(10), || std::fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n')))
            .unwrap();
        let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
        let proc_dir = Path::new("/proc").join(&pid);
        assert!(proc_dir.exists());
        let start = Instant::now();
        drop(server);
        assert!(start.elapsed() < Duration::from_secs(5));
        // Gone, or at most a zombie of the (already exited) watchdog for a moment.
        let state = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "{state}");
    }
}
