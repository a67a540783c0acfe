//! `arca` as a client of the REST API: `arca login` saves a profile (URL, key, and for MSP
//! admin keys the tenant to act on); `arca targets|sources|policies|jobs …` and `arca find`
//! then speak HTTP to that server. Exit codes: 0 done (a followed job succeeded), 1 refused,
//! failed or cancelled, 2 bad usage.
//!
//! Profiles live in `profiles.toml` under `$ARCA_CONFIG_DIR` (default
//! `$XDG_CONFIG_HOME/arca` or `~/.config/arca`), readable by the owner only; `--profile` or
//! `ARCA_PROFILE` picks one, else the one `arca login` last saved.
//!
//! `targets|sources|policies update` read the object, change what the flags name and `PUT` it
//! back with `If-Match` (`--if-match VERSION`, else the version read), so a change made in
//! between is refused (412) rather than overwritten. `arca snapshots|ls|restore` come here
//! only when no repository is given and a profile is active ([`through_server`]); with a
//! repository they stay the standalone commands.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arca_events::{PolicyId, Retention, SourceId, TargetId};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::control::{QemuArgs, RetentionArgs};

/// Which saved profile to use.
#[derive(Args, Clone, Debug)]
pub struct ProfileArg {
    /// Profile saved by `arca login` (default: the last one saved)
    #[arg(long, env = "ARCA_PROFILE")]
    profile: Option<String>,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The API, e.g. `http://127.0.0.1:8080`
    #[arg(long, env = "ARCA_API_URL")]
    url: String,
    /// The API key (else read from ARCA_API_KEY or, when that is unset, from standard input)
    #[arg(long, env = "ARCA_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The tenant an MSP admin key acts on
    #[arg(long)]
    tenant: Option<String>,
    /// Save as this profile
    #[arg(long, default_value = "default")]
    profile: String,
}

/// `--if-match VERSION`: change the object only if it is still at that version.
#[derive(Args, Clone, Debug)]
pub struct IfMatchArg {
    /// Change it only if it is still at this version (`show` prints it); else the version
    /// this command reads first
    #[arg(long, value_name = "VERSION")]
    if_match: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum TargetsCommand {
    /// List targets (credentials are never shown)
    List,
    /// Add a target; prints its id (the secret key comes from ARCA_TARGET_SECRET_ACCESS_KEY,
    /// an Azure account key from ARCA_TARGET_ACCOUNT_KEY)
    Add {
        name: String,
        /// fs:///abs/path, s3://bucket/prefix or azblob://container/prefix
        location: String,
        #[command(flatten)]
        settings: TargetSettingsArgs,
    },
    /// Show a target and its version
    Show { target: TargetId },
    /// Change a target's name, settings or credentials (its kind and location are fixed)
    Update {
        target: TargetId,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        settings: TargetSettingsArgs,
        /// Replace the stored credentials with --access-key-id and ARCA_TARGET_SECRET_ACCESS_KEY
        /// or ARCA_TARGET_ACCOUNT_KEY (implied by --access-key-id; else they stay as they are)
        #[arg(long)]
        new_credentials: bool,
        /// Remove the stored credentials
        #[arg(long, conflicts_with_all = ["access_key_id", "new_credentials"])]
        clear_credentials: bool,
        #[command(flatten)]
        if_match: IfMatchArg,
    },
    /// Remove a target (refused while a policy or replica uses it; the repository stays)
    Rm {
        target: TargetId,
        #[command(flatten)]
        if_match: IfMatchArg,
    },
}

/// A target's settings and credentials, as flags.
#[derive(Args, Clone, Debug)]
pub struct TargetSettingsArgs {
    /// Object-store endpoint URL
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region
    #[arg(long)]
    region: Option<String>,
    /// Azure storage account
    #[arg(long)]
    account_name: Option<String>,
    /// S3 access key id (the secret key comes from ARCA_TARGET_SECRET_ACCESS_KEY)
    #[arg(long)]
    access_key_id: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SourceKindArg {
    Files,
    Image,
    Postgres,
}

/// A field of a source that `update --clear` empties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceField {
    Excludes,
    Site,
    PreHook,
    PostHook,
    Qemu,
}

#[derive(Subcommand, Debug)]
pub enum SourcesCommand {
    /// List sources
    List,
    /// Add a source; prints its id
    Add {
        name: String,
        /// Paths (files), the image (image) or database names (postgres)
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(long, value_enum, default_value = "files")]
        kind: SourceKindArg,
        /// Host the data is read on
        #[arg(long, default_value = "localhost")]
        host: String,
        /// Leave out what matches (repeatable)
        #[arg(long)]
        exclude: Vec<String>,
        /// Only transport workers with this site label read it
        #[arg(long)]
        site: Option<String>,
        /// Command run before the backup (quiesce); its failure fails the job
        #[arg(long)]
        pre_hook: Option<String>,
        /// Command run after the backup, whatever happened
        #[arg(long)]
        post_hook: Option<String>,
        #[command(flatten)]
        qemu: QemuArgs,
    },
    /// Show a source and its version
    Show { source: SourceId },
    /// Change a source (its kind and host are fixed); a list given replaces the old one
    Update {
        source: SourceId,
        #[arg(long)]
        name: Option<String>,
        /// The paths, replacing the old ones (repeatable)
        #[arg(long = "path")]
        paths: Vec<String>,
        /// The excludes, replacing the old ones (repeatable)
        #[arg(long)]
        exclude: Vec<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        pre_hook: Option<String>,
        #[arg(long)]
        post_hook: Option<String>,
        #[command(flatten)]
        qemu: QemuArgs,
        /// Empty a field (repeatable)
        #[arg(long, value_enum)]
        clear: Vec<SourceField>,
        #[command(flatten)]
        if_match: IfMatchArg,
    },
    /// Remove a source (refused while a policy or replica uses it; its snapshots stay)
    Rm {
        source: SourceId,
        #[command(flatten)]
        if_match: IfMatchArg,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Incremental,
    Full,
    Differential,
}

/// A policy's settings as flags: what `add` and `update` share.
#[derive(Args, Clone, Debug)]
pub struct PolicySettingsArgs {
    /// Interval schedule in seconds (at least 60)
    #[arg(long, conflicts_with = "cron")]
    every: Option<u64>,
    /// Cron schedule (5 or 6 fields)
    #[arg(long)]
    cron: Option<String>,
    /// Time zone of the cron schedule (default UTC)
    #[arg(long, requires = "cron")]
    timezone: Option<String>,
    /// Run one late firing when the scheduler was down (else skip)
    #[arg(long)]
    run_once_when_late: bool,
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    #[command(flatten)]
    retention: RetentionArgs,
    /// Copy each backup to this target too (repeatable; replaces the old list)
    #[arg(long = "copy-to")]
    copy_to: Vec<TargetId>,
    /// Verify the target every this many seconds
    #[arg(long)]
    verify_every: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum PoliciesCommand {
    /// List policies
    List,
    /// Create a policy (source → target on a schedule); prints its id
    Add {
        name: String,
        #[arg(long)]
        source: SourceId,
        #[arg(long)]
        target: TargetId,
        #[command(flatten)]
        settings: PolicySettingsArgs,
    },
    /// Show a policy and its version
    Show { policy: PolicyId },
    /// Change a policy (its source and target are fixed); rules given replace the old ones
    Update {
        policy: PolicyId,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        settings: PolicySettingsArgs,
        /// Run late firings as skipped (undoes --run-once-when-late)
        #[arg(long, conflicts_with = "run_once_when_late")]
        skip_when_late: bool,
        /// Keep every snapshot (drops the keep rules)
        #[arg(long)]
        keep_all: bool,
        /// Copy to no other target
        #[arg(long, conflicts_with = "copy_to")]
        no_copies: bool,
        /// Verify on no schedule
        #[arg(long, conflicts_with = "verify_every")]
        no_verify: bool,
        #[command(flatten)]
        if_match: IfMatchArg,
    },
    /// Delete a policy: it fires no more (its snapshots stay)
    Rm {
        policy: PolicyId,
        #[command(flatten)]
        if_match: IfMatchArg,
    },
    /// Run a policy's backup now and follow it (exit 1 if it fails)
    Run {
        policy: PolicyId,
        /// Return at once with the job id instead of following it
        #[arg(long)]
        no_follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List jobs, newest first
    List,
    /// Follow a job until it ends (exit 1 if it fails or is cancelled)
    Watch { job: String },
    /// Cancel a job that has not ended
    Cancel { job: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Profiles {
    active: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Profile {
    url: String,
    key: String,
    tenant: Option<String>,
}

fn profiles_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("ARCA_CONFIG_DIR") {
        return PathBuf::from(dir).join("profiles.toml");
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("arca").join("profiles.toml")
}

fn load_profiles() -> Result<Profiles> {
    let path = profiles_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("read {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn save_profiles(profiles: &Profiles) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = profiles_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = toml::to_string(profiles).expect("profiles serialise");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))
}

/// A client of one server with one key.
struct Client {
    http: reqwest::Client,
    profile: Profile,
}

/// What the API answered: a status, its JSON (or text) body and the object's version
/// (`ETag`), when it gave one.
struct Answer {
    status: reqwest::StatusCode,
    body: Value,
    version: Option<u64>,
}

impl Answer {
    /// The body of a success, or the problem document's detail as the error.
    fn ok(self) -> Result<Value> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        match (self.body["detail"].as_str(), self.body["code"].as_str()) {
            (Some(detail), Some(code)) => bail!("{detail} ({code}, HTTP {})", self.status.as_u16()),
            _ => bail!("HTTP {}: {}", self.status, self.body),
        }
    }
}

impl Client {
    fn new(profile: Profile) -> Result<Self> {
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Self { http, profile })
    }

    fn from(arg: &ProfileArg) -> Result<Self> {
        let profiles = load_profiles()?;
        let name = arg
            .profile
            .clone()
            .or(profiles.active.clone())
            .ok_or_else(|| anyhow::anyhow!("no profile: run `arca login --url URL` first (or give --profile)"))?;
        let profile = profiles
            .profiles
            .get(&name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no profile `{name}` in {}", profiles_path().display()))?;
        Self::new(profile)
    }

    fn url(&self, path: &str) -> String {
        let mut url = format!("{}{path}", self.profile.url.trim_end_matches('/'));
        if let Some(tenant) = &self.profile.tenant {
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str("tenant=");
            url.push_str(tenant);
        }
        url
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Answer> {
        self.send_if(method, path, body, None).await
    }

    /// [`Client::send`] with `If-Match: "<version>"` when `version` is given.
    async fn send_if(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        version: Option<u64>,
    ) -> Result<Answer> {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(&self.profile.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(version) = version {
            request = request.header(reqwest::header::IF_MATCH, format!("\"{version}\""));
        }
        let response =
            request.send().await.with_context(|| format!("the API at {} did not answer", self.profile.url))?;
        let status = response.status();
        let version = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start_matches("W/").trim_matches('"').parse().ok());
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body, version })
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None).await?.ok()
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await?.ok()
    }

    /// Every item of a paginated list.
    async fn list_all(&self, path: &str) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                Some(cursor) => format!("{path}{}cursor={cursor}", if path.contains('?') { '&' } else { '?' }),
                None => path.to_owned(),
            };
            let page = self.get(&page_path).await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(items),
            }
        }
    }

    /// Follows a job's events until it ends; its last state (`status`, `snapshot`, `error`).
    async fn watch(&self, job: &str, json: bool) -> Result<Value> {
        let response = self
            .http
            .get(self.url(&format!("/v1/jobs/{job}/events")))
            .bearer_auth(&self.profile.key)
            .send()
            .await
            .with_context(|| format!("the API at {} did not answer", self.profile.url))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = serde_json::from_str(&response.text().await?).unwrap_or(Value::Null);
            Answer { status, body, version: None }.ok()?;
            bail!("HTTP {status}");
        }
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        let mut response = response;
        let mut buffer = String::new();
        let mut state = json!({ "status": "unknown" });
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let mut event = "";
                let mut data = "";
                for line in frame.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event = name;
                    } else if let Some(text) = line.strip_prefix("data: ") {
                        data = text;
                    }
                }
                let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                if json && !event.is_empty() {
                    println!("{}", json!({ "event": event, "data": data }));
                }
                match event {
                    "state" => {
                        if let Some(bar) = &bar {
                            bar.set_message(data["status"].as_str().unwrap_or("unknown").to_owned());
                        }
                        state = data;
                    }
                    "progress" => {
                        if let Some(bar) = &bar {
                            bar.set_length(data["bytes_total"].as_u64().unwrap_or(0));
                            bar.set_position(data["bytes_done"].as_u64().unwrap_or(0));
                        }
                    }
                    "end" => {
                        if let Some(bar) = &bar {
                            bar.finish_and_clear();
                        }
                        return Ok(state);
                    }
                    _ => {}
                }
            }
            match response.chunk().await.context("the job's event stream broke")? {
                Some(chunk) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
                None => bail!("the job's event stream ended before the job did (it was {})", state["status"]),
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Prints a list: JSON lines with `--json`, else one line per item.
fn print_items(items: &[Value], json: bool, columns: &[&str]) {
    for item in items {
        if json {
            println!("{item}");
        } else {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| match &item[*c] {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                })
                .collect();
            println!("{}", cells.join("  "));
        }
    }
}

pub fn login(args: LoginArgs, json: bool) -> Result<u8> {
    let key = match args.key {
        Some(key) => key,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("read the API key from standard input")?;
            line.trim().to_owned()
        }
    };
    if key.is_empty() {
        bail!("give the API key: --key, ARCA_API_KEY or on standard input");
    }
    let profile = Profile { url: args.url.trim_end_matches('/').to_owned(), key, tenant: args.tenant };
    let client = Client::new(profile.clone())?;
    let answer = runtime()?.block_on(client.send(reqwest::Method::GET, "/v1/jobs?limit=1", None))?;
    let msp_without_tenant = answer.body["code"] == "tenant_required";
    if !answer.status.is_success() && !msp_without_tenant {
        answer.ok()?;
    }
    let mut profiles = load_profiles()?;
    profiles.profiles.insert(args.profile.clone(), profile);
    profiles.active = Some(args.profile.clone());
    save_profiles(&profiles)?;
    if json {
        println!("{}", json!({ "profile": args.profile, "url": args.url }));
    } else {
        println!("logged in to {} as profile `{}`", args.url, args.profile);
        if msp_without_tenant {
            println!("this is an MSP admin key: give --tenant to act on a tenant");
        }
    }
    Ok(0)
}

pub fn list(arg: &ProfileArg, resource: &str, json: bool) -> Result<u8> {
    let client = Client::from(arg)?;
    let items = runtime()?.block_on(client.list_all(&format!("/v1/{resource}")))?;
    let columns: &[&str] = match resource {
        "jobs" => &["id", "kind", "status", "created_at"],
        _ => &["id", "name"],
    };
    print_items(&items, json, columns);
    Ok(0)
}

pub fn targets(arg: &ProfileArg, command: TargetsCommand, json: bool) -> Result<u8> {
    if let TargetsCommand::List = command {
        return list(arg, "targets", json);
    }
    let client = Client::from(arg)?;
    runtime()?.block_on(async {
        match command {
            TargetsCommand::List => unreachable!("listed above"),
            TargetsCommand::Add { name, location, settings } => {
                let mut body = json!({ "name": name, "location": location, "settings": settings.settings() });
                if let Some(credentials) = settings.credentials() {
                    body["credentials"] = credentials;
                }
                add(&client, "targets", body, json).await
            }
            TargetsCommand::Show { target } => show(&client, "targets", &target.to_string(), json).await,
            TargetsCommand::Update { target, name, settings, new_credentials, clear_credentials, if_match } => {
                // A secret left in the environment by an earlier `add` does not replace them.
                let credentials = if clear_credentials {
                    Some(json!({}))
                } else if new_credentials || settings.access_key_id.is_some() {
                    let Some(credentials) = settings.credentials() else {
                        return Err(usage(
                            "--new-credentials takes them from --access-key-id, ARCA_TARGET_SECRET_ACCESS_KEY \
                             or ARCA_TARGET_ACCOUNT_KEY: none is given",
                        ));
                    };
                    Some(credentials)
                } else {
                    None
                };
                update(&client, "targets", &target.to_string(), if_match.if_match, json, |current| {
                    let mut merged = current["settings"].as_object().cloned().unwrap_or_default();
                    for (key, value) in settings.settings() {
                        merged.insert(key, Value::String(value));
                    }
                    let mut body = json!({
                        "name": name.clone().unwrap_or_else(|| text(&current["name"])),
                        "settings": merged,
                    });
                    // Left out, the stored credentials stay (they are never shown, so never sent back).
                    if let Some(credentials) = credentials {
                        body["credentials"] = credentials;
                    }
                    body
                })
                .await
            }
            TargetsCommand::Rm { target, if_match } => {
                remove(&client, "targets", &target.to_string(), if_match.if_match, json).await
            }
        }
    })
}

impl TargetSettingsArgs {
    fn settings(&self) -> BTreeMap<String, String> {
        [("endpoint", &self.endpoint), ("region", &self.region), ("account_name", &self.account_name)]
            .into_iter()
            .filter_map(|(key, value)| value.clone().map(|value| (key.to_owned(), value)))
            .collect()
    }

    /// The credentials the flags and the environment give, if any.
    fn credentials(&self) -> Option<Value> {
        let secret = std::env::var("ARCA_TARGET_SECRET_ACCESS_KEY").ok();
        let account_key = std::env::var("ARCA_TARGET_ACCOUNT_KEY").ok();
        if self.access_key_id.is_none() && secret.is_none() && account_key.is_none() {
            return None;
        }
        Some(json!({ "access_key_id": self.access_key_id, "secret_access_key": secret, "account_key": account_key }))
    }
}

pub fn sources(arg: &ProfileArg, command: SourcesCommand, json: bool) -> Result<u8> {
    if let SourcesCommand::List = command {
        return list(arg, "sources", json);
    }
    let client = Client::from(arg)?;
    runtime()?.block_on(async {
        match command {
            SourcesCommand::List => unreachable!("listed above"),
            SourcesCommand::Add { name, paths, kind, host, exclude, site, pre_hook, post_hook, qemu } => {
                let kind = match kind {
                    SourceKindArg::Files => "files",
                    SourceKindArg::Image => "image",
                    SourceKindArg::Postgres => "postgres",
                };
                let body = json!({
                    "name": name, "kind": kind, "host": host, "paths": paths, "excludes": exclude,
                    "site": site, "pre_hook": pre_hook, "post_hook": post_hook, "qemu": qemu.disk(),
                });
                add(&client, "sources", body, json).await
            }
            SourcesCommand::Show { source } => show(&client, "sources", &source.to_string(), json).await,
            SourcesCommand::Update {
                source,
                name,
                paths,
                exclude,
                site,
                pre_hook,
                post_hook,
                qemu,
                clear,
                if_match,
            } => {
                update(&client, "sources", &source.to_string(), if_match.if_match, json, |current| {
                    let keep = |given: &Option<String>, field: SourceField, key: &str| {
                        if clear.contains(&field) {
                            Value::Null
                        } else {
                            given.clone().map(Value::String).unwrap_or_else(|| current[key].clone())
                        }
                    };
                    let qemu = match qemu.disk() {
                        _ if clear.contains(&SourceField::Qemu) => Value::Null,
                        Some(disk) => json!(disk),
                        None => current["qemu"].clone(),
                    };
                    let excludes = if clear.contains(&SourceField::Excludes) {
                        json!([])
                    } else if exclude.is_empty() {
                        current["excludes"].clone()
                    } else {
                        json!(exclude)
                    };
                    json!({
                        "name": name.clone().unwrap_or_else(|| text(&current["name"])),
                        "paths": if paths.is_empty() { current["paths"].clone() } else { json!(paths) },
                        "excludes": excludes,
                        "site": keep(&site, SourceField::Site, "site"),
                        "pre_hook": keep(&pre_hook, SourceField::PreHook, "pre_hook"),
                        "post_hook": keep(&post_hook, SourceField::PostHook, "post_hook"),
                        "qemu": qemu,
                    })
                })
                .await
            }
            SourcesCommand::Rm { source, if_match } => {
                remove(&client, "sources", &source.to_string(), if_match.if_match, json).await
            }
        }
    })
}

impl PolicySettingsArgs {
    /// Sets what these flags give in a policy's body (a new one's, or the one `update` read).
    fn apply(&self, body: &mut Value) {
        if let Some(seconds) = self.every {
            body["schedule"] = json!({ "type": "interval", "seconds": seconds });
        }
        if let Some(expression) = &self.cron {
            body["schedule"] = json!({ "type": "cron", "expression": expression, "timezone": self.timezone });
        }
        if self.run_once_when_late {
            body["misfire"] = json!("run_once");
        }
        if let Some(mode) = self.mode {
            body["mode"] = json!(match mode {
                ModeArg::Incremental => "incremental",
                ModeArg::Full => "full",
                ModeArg::Differential => "differential",
            });
        }
        let rules = self.retention.rules();
        if rules != Retention::default() {
            // Rules given replace the old ones as a whole.
            body["retention"] = json!(rules);
        }
        if !self.copy_to.is_empty() {
            body["copy_targets"] = json!(self.copy_to);
        }
        if let Some(seconds) = self.verify_every {
            body["verify_every_seconds"] = json!(seconds);
        }
    }
}

/// The body of a policy `PUT`, from the policy as `GET` shows it.
fn policy_body(current: &Value) -> Value {
    let retention: serde_json::Map<String, Value> = current["retention"]
        .as_object()
        .map(|rules| rules.iter().filter(|(_, keep)| !keep.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut schedule = current["schedule"].clone();
    if schedule["type"] == "interval"
        && let Some(object) = schedule.as_object_mut()
    {
        object.retain(|key, _| key == "type" || key == "seconds");
    }
    json!({
        "name": current["name"],
        "schedule": schedule,
        "misfire": current["misfire"],
        "mode": current["mode"],
        "retention": retention,
        "copy_targets": current["copy_targets"],
        "verify_every_seconds": current["verify_schedule"]["seconds"],
    })
}

pub fn policies(arg: &ProfileArg, command: PoliciesCommand, json: bool) -> Result<u8> {
    if let PoliciesCommand::List = command {
        return list(arg, "policies", json);
    }
    let client = Client::from(arg)?;
    runtime()?.block_on(async {
        match command {
            PoliciesCommand::List => unreachable!("listed above"),
            PoliciesCommand::Add { name, source, target, settings } => {
                if settings.every.is_none() && settings.cron.is_none() {
                    return Err(usage("a policy needs a schedule: --every SECONDS or --cron EXPRESSION"));
                }
                let mut body = json!({ "name": name, "source": source, "target": target });
                settings.apply(&mut body);
                add(&client, "policies", body, json).await
            }
            PoliciesCommand::Show { policy } => show(&client, "policies", &policy.to_string(), json).await,
            PoliciesCommand::Update {
                policy,
                name,
                settings,
                skip_when_late,
                keep_all,
                no_copies,
                no_verify,
                if_match,
            } => {
                update(&client, "policies", &policy.to_string(), if_match.if_match, json, |current| {
                    let mut body = policy_body(current);
                    if let Some(name) = &name {
                        body["name"] = json!(name);
                    }
                    if keep_all {
                        body["retention"] = json!({});
                    }
                    settings.apply(&mut body);
                    if skip_when_late {
                        body["misfire"] = json!("skip");
                    }
                    if no_copies {
                        body["copy_targets"] = json!([]);
                    }
                    if no_verify {
                        body["verify_every_seconds"] = Value::Null;
                    }
                    body
                })
                .await
            }
            PoliciesCommand::Rm { policy, if_match } => {
                remove(&client, "policies", &policy.to_string(), if_match.if_match, json).await
            }
            PoliciesCommand::Run { policy, no_follow } => {
                let started = client.post(&format!("/v1/policies/{policy}/run"), json!({})).await?;
                let job = started["job"].as_str().unwrap_or_default().to_owned();
                if no_follow {
                    println!("{}", if json { started.to_string() } else { job });
                    return Ok(0);
                }
                if !json {
                    eprintln!("job {job}");
                }
                finish(&client, &job, json).await
            }
        }
    })
}

/// A usage error: exit code 2, as clap gives for the ones it finds.
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: &str) -> anyhow::Error {
    UsageError(message.to_owned()).into()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// `POST /v1/<resource>`; prints the new id.
async fn add(client: &Client, resource: &str, body: Value, json: bool) -> Result<u8> {
    let created = client.post(&format!("/v1/{resource}"), body).await?;
    println!("{}", if json { created.to_string() } else { text(&created["id"]) });
    Ok(0)
}

/// `GET /v1/<resource>/<id>`: the object with its `version`.
async fn read(client: &Client, resource: &str, id: &str) -> Result<(Value, Option<u64>)> {
    let answer = client.send(reqwest::Method::GET, &format!("/v1/{resource}/{id}"), None).await?;
    let version = answer.version;
    Ok((answer.ok()?, version))
}

async fn show(client: &Client, resource: &str, id: &str, json: bool) -> Result<u8> {
    let (mut object, version) = read(client, resource, id).await?;
    if let Some(version) = version {
        object["version"] = json!(version);
    }
    if json {
        println!("{object}");
    } else {
        println!("{}", serde_json::to_string_pretty(&object).expect("JSON prints"));
    }
    Ok(0)
}

/// Reads the object, lets `change` build the replacement from it, and `PUT`s that with
/// `If-Match`: the version given, else the one read (so nothing changed in between is lost).
async fn update(
    client: &Client,
    resource: &str,
    id: &str,
    if_match: Option<u64>,
    json: bool,
    change: impl FnOnce(&Value) -> Value,
) -> Result<u8> {
    let (current, version) = read(client, resource, id).await?;
    let body = change(&current);
    let path = format!("/v1/{resource}/{id}");
    let answer = client.send_if(reqwest::Method::PUT, &path, Some(body), if_match.or(version)).await?.ok()?;
    if json {
        println!("{answer}");
    } else {
        println!("updated {id} (version {})", answer["version"]);
    }
    Ok(0)
}

/// `DELETE /v1/<resource>/<id>`, with `If-Match` when a version is given.
async fn remove(client: &Client, resource: &str, id: &str, if_match: Option<u64>, json: bool) -> Result<u8> {
    let path = format!("/v1/{resource}/{id}");
    client.send_if(reqwest::Method::DELETE, &path, None, if_match).await?.ok()?;
    if json {
        println!("{}", json!({ "id": id, "removed": true }));
    } else {
        println!("removed {id}");
    }
    Ok(0)
}

pub fn jobs(arg: &ProfileArg, command: JobsCommand, json: bool) -> Result<u8> {
    let client = Client::from(arg)?;
    match command {
        JobsCommand::List => list(arg, "jobs", json),
        JobsCommand::Watch { job } => runtime()?.block_on(finish(&client, &job, json)),
        JobsCommand::Cancel { job } => {
            let answer = runtime()?.block_on(client.post(&format!("/v1/jobs/{job}/cancel"), json!({})))?;
            println!("{}", if json { answer.to_string() } else { format!("job {job} cancelled") });
            Ok(0)
        }
    }
}

/// Follows `job` to its end and prints how it ended; exit 1 unless it succeeded.
async fn finish(client: &Client, job: &str, json: bool) -> Result<u8> {
    let detail = client.watch(job, json).await?;
    let status = detail["status"].as_str().unwrap_or("unknown");
    if !json {
        match status {
            "succeeded" => println!(
                "job {job} succeeded{}",
                detail["snapshot"].as_str().map(|s| format!(": snapshot {s}")).unwrap_or_default()
            ),
            other => {
                println!("job {job} {other}{}", detail["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default())
            }
        }
    }
    Ok(if status == "succeeded" { 0 } else { 1 })
}

/// `path` as a query parameter's value.
fn encode(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub fn find(arg: &ProfileArg, path: &str, json: bool) -> Result<u8> {
    let client = Client::from(arg)?;
    let items = runtime()?.block_on(client.list_all(&format!("/v1/files?path={}", encode(path))))?;
    if json {
        print_items(&items, true, &[]);
    } else {
        for item in &items {
            let snapshots = item["snapshots"].as_array().map(Vec::len).unwrap_or(0);
            println!(
                "{}  {} bytes  in {snapshots} snapshot(s)",
                item["path"].as_str().unwrap_or("?"),
                item["size"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(if items.is_empty() { 1 } else { 0 })
}

// ---- Snapshots through the server ----

/// True when `arca snapshots|ls|restore` ask the server: no repository was given (`--repo`,
/// `ARCA_REPO`) and a profile is active (`--profile`, `ARCA_PROFILE` or the last login). With
/// a repository they read it directly, exactly as they always have.
pub fn through_server(repo_given: bool, arg: &ProfileArg) -> Result<bool> {
    if repo_given {
        return Ok(false);
    }
    Ok(arg.profile.is_some() || load_profiles()?.active.is_some())
}

/// Every snapshot of the tenant, oldest first (as the standalone listing orders them).
async fn all_snapshots(client: &Client) -> Result<Vec<Value>> {
    let mut snapshots = client.list_all("/v1/snapshots").await?;
    snapshots.sort_by(|a, b| text(&a["time"]).cmp(&text(&b["time"])).then(text(&a["id"]).cmp(&text(&b["id"]))));
    Ok(snapshots)
}

/// The snapshot `wanted` names: `latest`, or a unique prefix of its id or of its id in the
/// repository.
async fn find_snapshot(client: &Client, wanted: &str) -> Result<Value> {
    let snapshots = all_snapshots(client).await?;
    if wanted == "latest" {
        return snapshots.last().cloned().ok_or_else(|| anyhow::anyhow!("there are no snapshots"));
    }
    let found: Vec<&Value> = snapshots
        .iter()
        .filter(|s| text(&s["id"]).starts_with(wanted) || text(&s["repo_snapshot"]).starts_with(wanted))
        .collect();
    match found.as_slice() {
        [] => bail!("no snapshot `{wanted}`"),
        [one] => Ok((*one).clone()),
        many => bail!("`{wanted}` names {} snapshots: give more of the id", many.len()),
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

pub fn snapshots(arg: &ProfileArg, json: bool) -> Result<u8> {
    let client = Client::from(arg)?;
    let mut snapshots = runtime()?.block_on(all_snapshots(&client))?;
    if json {
        for snapshot in &mut snapshots {
            snapshot["short_id"] = json!(short(&text(&snapshot["id"])));
        }
        println!("{}", Value::Array(snapshots));
        return Ok(0);
    }
    println!("{:<8}  {:<19}  {:<12}  {:<8}  paths", "id", "time (UTC)", "host", "repo id");
    for s in &snapshots {
        let time = chrono::DateTime::parse_from_rfc3339(&text(&s["time"]))
            .map(|t| t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|_| text(&s["time"]));
        let words = |v: &Value| v.as_array().map(|a| a.iter().map(text).collect::<Vec<_>>()).unwrap_or_default();
        let tags = words(&s["tags"]);
        println!(
            "{:<8}  {:<19}  {:<12}  {:<8}  {}{}{}",
            short(&text(&s["id"])),
            time,
            text(&s["host"]),
            short(&text(&s["repo_snapshot"])),
            words(&s["paths"]).join(" "),
            if tags.is_empty() { String::new() } else { format!(" [{}]", tags.join(",")) },
            if s["partial"] == true { " (partial)" } else { "" },
        );
    }
    Ok(0)
}

/// The direct children of `folder` in `snapshot`, from the catalog's file index.
async fn folder(client: &Client, snapshot: &str, folder: &str) -> Result<Vec<Value>> {
    let path = format!("/v1/snapshots/{snapshot}/tree?path={}", encode(folder));
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_path = match &cursor {
            Some(cursor) => format!("{path}&cursor={cursor}"),
            None => path.clone(),
        };
        let answer = client.send(reqwest::Method::GET, &page_path, None).await?;
        if answer.status == reqwest::StatusCode::NOT_FOUND {
            // Listed, so it exists: the catalog has not indexed its files yet.
            bail!(
                "the files of snapshot {} are not indexed yet (soon after a backup they are); try again",
                short(snapshot)
            );
        }
        let page = answer.ok()?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(items),
        }
    }
}

pub fn ls(arg: &ProfileArg, wanted: &str, path: Option<String>, json: bool) -> Result<u8> {
    let client = Client::from(arg)?;
    let rows = runtime()?.block_on(async {
        let snapshot = find_snapshot(&client, wanted).await?;
        let id = text(&snapshot["id"]);
        let prefix = path.map(|p| p.trim_end_matches('/').to_owned()).unwrap_or_default();
        // Depth first, each folder before what it holds: the order the standalone `ls` walks.
        let mut pending: Vec<Value> = if prefix.is_empty() {
            folder(&client, &id, "/").await?
        } else {
            let parent = match prefix.rsplit_once('/') {
                Some(("", _)) => "/",
                Some((parent, _)) => parent,
                None => bail!("path `{prefix}` not found in snapshot {wanted}"),
            };
            let siblings = folder(&client, &id, parent).await?;
            let Some(entry) = siblings.into_iter().find(|entry| text(&entry["path"]) == prefix) else {
                bail!("path `{prefix}` not found in snapshot {wanted}");
            };
            vec![entry]
        };
        pending.reverse();
        let mut rows = Vec::new();
        while let Some(entry) = pending.pop() {
            if entry["kind"] == "dir" {
                let children = folder(&client, &id, &text(&entry["path"])).await?;
                pending.extend(children.into_iter().rev());
            }
            rows.push(entry);
        }
        Ok::<_, anyhow::Error>(rows)
    })?;
    for entry in rows {
        let path = text(&entry["path"]);
        let kind = text(&entry["kind"]);
        let size = entry["size"].as_u64().unwrap_or(0);
        if json {
            let mtime_ns =
                chrono::DateTime::parse_from_rfc3339(&text(&entry["mtime"])).ok().and_then(|t| t.timestamp_nanos_opt());
            println!("{}", json!({ "path": path, "type": kind, "size": size, "mtime_ns": mtime_ns }));
        } else {
            let mark = match kind.as_str() {
                "dir" => 'd',
                "symlink" => 'l',
                _ => '-',
            };
            println!("{mark} {size:>12} {path}");
        }
    }
    Ok(0)
}

pub fn restore(
    arg: &ProfileArg,
    wanted: &str,
    target: &std::path::Path,
    include: Vec<String>,
    json: bool,
) -> Result<u8> {
    let client = Client::from(arg)?;
    let target = std::path::absolute(target).with_context(|| format!("folder `{}`", target.display()))?;
    let Some(folder) = target.to_str() else { bail!("the folder `{}` is not UTF-8", target.display()) };
    runtime()?.block_on(async {
        let snapshot = find_snapshot(&client, wanted).await?;
        let body = json!({
            "snapshot": snapshot["id"],
            "paths": include,
            "to": { "type": "directory", "path": folder },
        });
        let started = client.post("/v1/restores", body).await?;
        let job = text(&started["job"]);
        if !json {
            eprintln!(
                "job {job}: restoring snapshot {} into {folder} (on the server's host)",
                short(&text(&snapshot["id"]))
            );
        }
        finish(&client, &job, json).await
    })
}
