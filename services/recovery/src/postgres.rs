//! Restores of PostgreSQL dumps into a new database.
//!
//! The transport stores a PostgreSQL source as one file per database at the root of its
//! snapshot: `<database>.pgdump`, pg_dump's custom format (uncompressed, so the repository's
//! zstd and deduplication work on it), or `<database>.sql`, plain SQL from earlier versions.
//! A restore into [`RestoreDestination::Database`](arca_events::RestoreDestination):
//!
//! 1. picks the dump (the only one, or the one `from` names);
//! 2. creates the database with `createdb`, refusing a name that exists — a restore never
//!    writes into a database it did not create. The new database's comment names the job, so
//!    an attempt that died half way is recognised by the next attempt of the same job and
//!    started over;
//! 3. streams the dump from the repository into `pg_restore --single-transaction
//!    --exit-on-error` (or `psql --single-transaction -v ON_ERROR_STOP=1` for plain SQL)
//!    through a pipe, with no copy on disk; every chunk is authenticated before it is written;
//! 4. drops the database it created when the restore fails or is cancelled.
//!
//! The PostgreSQL tools connect as the worker's `PG*` environment says (`PGHOST`, `PGPORT`,
//! `PGUSER`, `PGPASSFILE`, `PGSERVICE`, …), always with `--no-password`, so a missing password
//! fails at once instead of waiting for a prompt. Passwords never pass through the platform.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arca_repo::format::{Node, NodeKind, Tree};
use arca_repo::reader::FileReader;
use arca_repo::repository::{Index, TreeLoader};
use arca_repo::{Repository, Snapshot};
use arca_worker::JobError;

/// The file name suffix of a custom-format dump.
pub const CUSTOM_DUMP_SUFFIX: &str = ".pgdump";
/// The file name suffix of a plain SQL dump.
pub const PLAIN_DUMP_SUFFIX: &str = ".sql";

/// How a dump was written, which decides the tool that restores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpFormat {
    /// `pg_dump -Fc`: restored with `pg_restore`.
    Custom,
    /// `pg_dump` plain SQL: restored with `psql`.
    Plain,
}

/// A dump in a snapshot: the database it was taken from and its format.
fn dump_of(node: &Node) -> Option<(String, DumpFormat)> {
    if node.kind != NodeKind::File {
        return None;
    }
    let name = std::str::from_utf8(&node.name).ok()?;
    if let Some(database) = name.strip_suffix(CUSTOM_DUMP_SUFFIX) {
        return Some((database.to_owned(), DumpFormat::Custom));
    }
    name.strip_suffix(PLAIN_DUMP_SUFFIX).map(|database| (database.to_owned(), DumpFormat::Plain))
}

/// The dump to restore from a snapshot's root: the one `from` names, or the only one.
pub fn choose_dump<'t>(root: &'t Tree, from: Option<&str>) -> Result<(&'t Node, DumpFormat), String> {
    let dumps: Vec<(&Node, String, DumpFormat)> =
        root.nodes.iter().filter_map(|node| dump_of(node).map(|(database, format)| (node, database, format))).collect();
    let names = || dumps.iter().map(|(_, database, _)| format!("`{database}`")).collect::<Vec<_>>().join(", ");
    match from {
        // A custom-format dump wins over a plain one of the same database.
        Some(from) => {
            let mut found: Vec<_> = dumps.iter().filter(|(_, database, _)| database == from).collect();
            found.sort_by_key(|(_, _, format)| *format != DumpFormat::Custom);
            match found.first() {
                Some((node, _, format)) => Ok((node, *format)),
                None if dumps.is_empty() => Err("the snapshot holds no PostgreSQL dump".into()),
                None => Err(format!("the snapshot holds no dump of `{from}`; it holds {}", names())),
            }
        }
        None => match &dumps[..] {
            [] => Err("the snapshot holds no PostgreSQL dump".into()),
            [(node, _, format)] => Ok((node, *format)),
            _ => Err(format!("the snapshot holds dumps of {}: say which with `from`", names())),
        },
    }
}

/// What a restore into a database asks for.
pub struct DatabaseRestore {
    /// The database to create.
    pub name: String,
    /// Which dump, by its database's name.
    pub from: Option<String>,
    /// Written as the new database's comment: an unfinished earlier attempt of the same job
    /// left a database with this comment, which may be dropped and made again.
    pub marker: String,
    /// Settings for the PostgreSQL tools on top of the worker's own environment (none in the
    /// services: they connect as the `PG*` environment they were started with).
    pub environment: Vec<(String, String)>,
}

/// What a finished restore did.
pub struct Restored {
    pub database: String,
    pub bytes: u64,
}

/// Restores a dump of `snapshot` into a new database (see the module docs). Blocking: run it
/// on a blocking thread. `bytes_total`/`bytes_done` report progress; `cancel` stops it.
pub fn restore_database(
    repo: &Repository,
    snapshot: &Snapshot,
    request: &DatabaseRestore,
    bytes_total: &AtomicU64,
    bytes_done: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<Restored, JobError> {
    let index = Arc::new(repo.load_index()?);
    let root = TreeLoader::new(repo, &index).load(&snapshot.tree)?;
    let (node, format) = choose_dump(&root, request.from.as_deref()).map_err(JobError::Permanent)?;
    bytes_total.store(node.size, Ordering::Relaxed);
    let tools = Tools { environment: &request.environment };
    let name = &request.name;
    match tools.database_comment(name)? {
        None => {}
        Some(comment) if comment == request.marker => {
            tracing::warn!(database = %name, "dropping the database an unfinished attempt of this restore left");
            tools.drop_database(name)?;
        }
        Some(_) => return Err(already_exists(name)),
    }
    tools.create_database(name, &request.marker)?;
    let streamed = tools.stream_into(repo, &index, (node, format), name, bytes_done, cancel);
    if let Err(e) = &streamed {
        // The database is ours and half-made: take it away, so nothing mistakes it for a restore.
        if let Err(drop_error) = tools.drop_database(name) {
            tracing::warn!(database = %name, error = %drop_error, "could not drop the database of a failed restore");
            return Err(JobError::Permanent(format!(
                "{}; the half-restored database `{name}` is left: {drop_error}",
                message(e)
            )));
        }
    }
    streamed.map(|bytes| Restored { database: name.clone(), bytes })
}

fn message(error: &JobError) -> &str {
    match error {
        JobError::Permanent(m) | JobError::Temporary(m) => m,
    }
}

fn already_exists(name: &str) -> JobError {
    JobError::Permanent(format!(
        "database `{name}` already exists: a restore creates a new database and never writes into an existing one; \
         choose another name"
    ))
}

/// The PostgreSQL client tools, run with the worker's environment and `environment` on top.
struct Tools<'e> {
    environment: &'e [(String, String)],
}

/// Runs a tool to its end; its trimmed standard output, or an error naming it with the last
/// line it wrote to standard error.
fn run(program: &str, mut command: Command) -> Result<String, JobError> {
    let output = command.output().map_err(|e| {
        JobError::Permanent(format!("cannot run `{program}` (is the PostgreSQL client installed?): {e}"))
    })?;
    if !output.status.success() {
        return Err(JobError::Permanent(format!(
            "{program} failed ({}): {}",
            output.status,
            last_lines(&String::from_utf8_lossy(&output.stderr), 3)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The last `count` non-empty lines of a tool's error output, joined with ` | `.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

impl Tools<'_> {
    /// A tool with the options every call shares.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.arg("--no-password").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.envs(self.environment.iter().map(|(k, v)| (k, v)));
        command
    }

    /// A query on the maintenance database, with `name` bound as the psql variable `name`.
    fn query_with_name(&self, sql: &str, name: &str) -> Result<String, JobError> {
        let mut command = self.command("psql");
        command.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "--dbname=postgres", "-v"]);
        command.arg(format!("name={name}")).stdin(Stdio::piped());
        let mut child = command.spawn().map_err(|e| JobError::Permanent(format!("cannot run `psql`: {e}")))?;
        // psql interpolates variables in what it reads, not in `-c` commands: send the query on stdin.
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(sql.as_bytes())
            .map_err(|e| JobError::Permanent(format!("psql: {e}")))?;
        let output = child.wait_with_output().map_err(|e| JobError::Permanent(format!("psql: {e}")))?;
        if !output.status.success() {
            return Err(JobError::Permanent(format!(
                "psql failed ({}): {}",
                output.status,
                last_lines(&String::from_utf8_lossy(&output.stderr), 3)
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim_end_matches('\n').to_owned())
    }

    /// `None` if the database does not exist, else its comment (empty if it has none).
    fn database_comment(&self, name: &str) -> Result<Option<String>, JobError> {
        let answer = self.query_with_name(
            "SELECT 'comment:' || coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = :'name';\n",
            name,
        )?;
        Ok(answer.strip_prefix("comment:").map(str::to_owned))
    }

    fn create_database(&self, name: &str, comment: &str) -> Result<(), JobError> {
        let mut command = self.command("createdb");
        command.args([name, comment]);
        match run("createdb", command) {
            // Another restore took the name between the look and the create: CREATE DATABASE is atomic.
            Err(JobError::Permanent(m)) if m.contains("already exists") => Err(already_exists(name)),
            other => other.map(drop),
        }
    }

    fn drop_database(&self, name: &str) -> Result<(), JobError> {
        let mut command = self.command("dropdb");
        command.args(["--if-exists", name]);
        run("dropdb", command).map(drop)
    }

    /// Pipes the dump into the tool that restores it; the bytes written.
    fn stream_into(
        &self,
        repo: &Repository,
        index: &Arc<Index>,
        (node, format): (&Node, DumpFormat),
        name: &str,
        bytes_done: &AtomicU64,
        cancel: &AtomicBool,
    ) -> Result<u64, JobError> {
        let (program, mut command) = match format {
            DumpFormat::Custom => {
                let mut command = self.command("pg_restore");
                // One transaction: a restore that fails half way leaves nothing behind it.
                command.args(["--exit-on-error", "--single-transaction", &format!("--dbname={name}")]);
                ("pg_restore", command)
            }
            DumpFormat::Plain => {
                let mut command = self.command("psql");
                command.args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "--single-transaction",
                    &format!("--dbname={name}"),
                ]);
                ("psql", command)
            }
        };
        // A plain dump's SELECTs print their results: nobody reads them.
        command.stdin(Stdio::piped()).stdout(Stdio::null());
        let mut child = command.spawn().map_err(|e| {
            JobError::Permanent(format!("cannot run `{program}` (is the PostgreSQL client installed?): {e}"))
        })?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let reader = FileReader::new(repo.clone(), index.clone(), node)?;
        let mut buf = vec![0u8; 256 << 10];
        let mut written = 0u64;
        // Read errors are the repository's; write errors mean the tool stopped reading (it failed,
        // and says why on stderr).
        let mut failure: Option<JobError> = None;
        loop {
            if cancel.load(Ordering::Relaxed) {
                failure = Some(JobError::Permanent("cancelled".into()));
                break;
            }
            let n = match reader.read_at(written, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    failure = Some(JobError::from(e));
                    break;
                }
            };
            if stdin.write_all(&buf[..n]).is_err() {
                break;
            }
            written += n as u64;
            bytes_done.store(written, Ordering::Relaxed);
        }
        if failure.is_some() {
            // Stop the tool before it reads an end of input and commits a partial restore.
            let _ = child.kill();
        }
        drop(stdin);
        let status = child.wait().map_err(|e| JobError::Permanent(format!("{program}: {e}")))?;
        let errors = errors.join().unwrap_or_default();
        if let Some(failure) = failure {
            return Err(failure);
        }
        if !status.success() {
            return Err(JobError::Permanent(format!(
                "{program} failed ({status}) restoring into `{name}`: {}",
                last_lines(&errors, 4)
            )));
        }
        if written != node.size {
            return Err(JobError::Permanent(format!(
                "{program} stopped reading after {written} of {} bytes of the dump",
                node.size
            )));
        }
        Ok(written)
    }
}

/// Cancels through `flag` when `ctx`'s job is cancelled, until the guard is dropped.
pub(crate) fn cancel_on(ctx: &arca_worker::JobContext) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let flag = Arc::new(AtomicBool::new(ctx.is_cancelled()));
    let watcher = tokio::spawn({
        let (ctx, flag) = (ctx.clone(), flag.clone());
        async move {
            ctx.cancelled().await;
            flag.store(true, Ordering::Relaxed);
        }
    });
    (flag, watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> Node {
        Node {
            name: name.as_bytes().to_vec(),
            kind: NodeKind::File,
            mode: 0o100600,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            device: 0,
            links: 1,
            size: 0,
            content: Vec::new(),
            subtree: None,
            link_target: None,
        }
    }

    fn tree(names: &[&str]) -> Tree {
        Tree { nodes: names.iter().map(|n| file(n)).collect() }
    }

    fn chosen(root: &Tree, from: Option<&str>) -> Result<(String, DumpFormat), String> {
        choose_dump(root, from).map(|(node, format)| (String::from_utf8_lossy(&node.name).into_owned(), format))
    }

    #[test]
    fn the_only_dump_or_the_named_one_is_restored() {
        let one = tree(&["app.pgdump"]);
        assert_eq!(chosen(&one, None), Ok(("app.pgdump".into(), DumpFormat::Custom)));
        assert_eq!(chosen(&one, Some("app")), Ok(("app.pgdump".into(), DumpFormat::Custom)));
        let old = tree(&["app.sql"]);
        assert_eq!(chosen(&old, None), Ok(("app.sql".into(), DumpFormat::Plain)));
        let both = tree(&["app.pgdump", "app.sql", "billing.pgdump", "notes.txt"]);
        assert_eq!(chosen(&both, Some("app")), Ok(("app.pgdump".into(), DumpFormat::Custom)));
        assert_eq!(chosen(&both, Some("billing")), Ok(("billing.pgdump".into(), DumpFormat::Custom)));
    }

    #[test]
    fn an_ambiguous_or_missing_dump_is_refused_with_what_there_is() {
        let two = tree(&["app.pgdump", "billing.pgdump"]);
        let error = chosen(&two, None).unwrap_err();
        assert!(error.contains("`app`, `billing`") && error.contains("`from`"), "{error}");
        let error = chosen(&two, Some("crm")).unwrap_err();
        assert!(error.contains("no dump of `crm`") && error.contains("`app`, `billing`"), "{error}");
        assert_eq!(chosen(&tree(&["notes.txt"]), None).unwrap_err(), "the snapshot holds no PostgreSQL dump");
    }

    /// Runs SQL on `url` with psql; its output.
    fn psql(url: &str, sql: &str) -> String {
        let output = Command::new("psql")
            .args([url, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(output.status.success(), "psql `{sql}`: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    const CHECKSUM: &str = "SELECT count(*) || ' ' || md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t";

    fn exists(database: &str) -> bool {
        let server = arca_testkit::postgres_server();
        psql(&format!("{server}/postgres"), &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"))
            == "1"
    }

    struct Scratch {
        _dir: tempfile::TempDir,
        repo: Repository,
    }

    fn scratch_repository() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let target = arca_repo::Target::parse(&format!("fs://{}", dir.path().display())).unwrap();
        let backend = arca_repo::Backend::open(&target, &arca_repo::TargetOptions::default()).unwrap();
        let kdf = arca_repo::crypto::KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 };
        let repo = Repository::init(backend, b"test", &arca_repo::InitOptions { kdf, ..Default::default() }).unwrap();
        Scratch { _dir: dir, repo }
    }

    fn back_up(repo: &Repository, name: &str, command: &str) -> Snapshot {
        let source = arca_repo::BackupSource::Command { name: name.into(), command: command.into() };
        arca_repo::backup(repo, source, &arca_repo::BackupOptions::default()).unwrap().snapshot
    }

    fn restore_into(repo: &Repository, snapshot: &Snapshot, name: &str, marker: &str) -> Result<Restored, JobError> {
        let request = DatabaseRestore {
            name: name.into(),
            from: None,
            marker: marker.into(),
            environment: arca_testkit::postgres_env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        };
        let (total, done) = (AtomicU64::new(0), AtomicU64::new(0));
        let restored = restore_database(repo, snapshot, &request, &total, &done, &AtomicBool::new(false));
        if restored.is_ok() {
            assert_eq!(done.load(Ordering::Relaxed), total.load(Ordering::Relaxed), "progress reaches the dump's size");
        }
        restored
    }

    fn permanent(result: Result<Restored, JobError>) -> String {
        match result {
            Err(JobError::Permanent(message)) => message,
            Err(JobError::Temporary(message)) => panic!("a temporary error: {message}"),
            Ok(restored) => panic!("restored `{}` where it should have failed", restored.database),
        }
    }

    /// Custom-format dumps (what the transport writes) and plain SQL ones (what it wrote
    /// before) restore into a new database equal to the source; an existing database is never
    /// written to, a database an unfinished attempt of the same job left is made again, and a
    /// failed restore leaves no database behind.
    #[test]
    fn dumps_restore_into_a_new_database_and_never_into_an_existing_one() {
        let source = arca_testkit::postgres_database();
        psql(
            &source.url,
            "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i",
        );
        let expected = psql(&source.url, CHECKSUM);
        let scratch = scratch_repository();
        let repo = &scratch.repo;
        for (file, format) in [("app.pgdump", "--format=custom --compress=0"), ("app.sql", "")] {
            let snapshot = back_up(repo, file, &format!("pg_dump --no-password {format} --dbname={}", source.url));
            let restored = arca_testkit::postgres_database_name();
            let done = restore_into(repo, &snapshot, &restored.name, "arca restore job 1").unwrap();
            assert_eq!(done.database, restored.name);
            assert_eq!(psql(&restored.url, CHECKSUM), expected, "{file}");

            // Again into the same name (another job): refused, and the database is untouched.
            psql(&restored.url, "DELETE FROM t WHERE id = 1");
            let changed = psql(&restored.url, CHECKSUM);
            let error = permanent(restore_into(repo, &snapshot, &restored.name, "arca restore job 2"));
            assert!(error.contains(&format!("database `{}` already exists", restored.name)), "{error}");
            assert_eq!(psql(&restored.url, CHECKSUM), changed, "an existing database is never written to");
            // The live source too.
            let error = permanent(restore_into(repo, &snapshot, &source.name, "arca restore job 3"));
            assert!(error.contains("already exists"), "{error}");
            assert_eq!(psql(&source.url, CHECKSUM), expected);

            // What an attempt of this job left half-done is started over.
            let retried = restore_into(repo, &snapshot, &restored.name, "arca restore job 1");
            assert!(retried.is_ok(), "{}", permanent(retried));
            assert_eq!(psql(&restored.url, CHECKSUM), expected);
        }
    }

    #[test]
    fn a_failing_restore_says_why_and_leaves_no_database() {
        let scratch = scratch_repository();
        let repo = &scratch.repo;
        let cases = [
            (
                "bad.sql",
                "printf 'CREATE TABLE a (x int);\\nSELECT broken FROM a;\\n'",
                "column \"broken\" does not exist",
            ),
            ("bad.pgdump", "echo not an archive", "pg_restore failed"),
        ];
        for (file, command, says) in cases {
            let snapshot = back_up(repo, file, command);
            let target = arca_testkit::postgres_database_name();
            let error = permanent(restore_into(repo, &snapshot, &target.name, "arca restore job 4"));
            assert!(error.contains(says), "{file}: {error}");
            assert!(!exists(&target.name), "{file}: the failed restore's database is dropped");
        }
        let snapshot = back_up(repo, "notes.txt", "echo hello");
        let target = arca_testkit::postgres_database_name();
        let error = permanent(restore_into(repo, &snapshot, &target.name, "arca restore job 5"));
        assert_eq!(error, "the snapshot holds no PostgreSQL dump");
        assert!(!exists(&target.name), "nothing is created for a snapshot without a dump");
    }

    #[test]
    fn tool_errors_keep_their_last_lines() {
        let text = "pg_restore: error: could not execute query\n\nCommand was: CREATE TABLE t ();\n";
        assert_eq!(last_lines(text, 4), "pg_restore: error: could not execute query | Command was: CREATE TABLE t ();");
        assert_eq!(last_lines("", 3), "");
    }
}
