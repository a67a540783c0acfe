//! `arca` as a client of the REST API: `arca login` saves a profile (URL, key, and for MSP
//! admin keys the tenant to act on); `arca targets|sources|policies|jobs …` and `arca find`
//! then speak HTTP to that server. Exit codes: 0 done (a followed job succeeded), 1 refused,
//! failed or cancelled, 2 bad usage.
//!
//! Profiles live in `profiles.toml` under `$ARCA_CONFIG_DIR` (default
//! `$XDG_CONFIG_HOME/arca` or `~/.config/arca`), readable by the owner only; `--profile` or
//! `ARCA_PROFILE` picks one, else the one `arca login` last saved.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

#[derive(Subcommand, Debug)]
pub enum ListOnly {
    /// List them
    List,
}

#[derive(Subcommand, Debug)]
pub enum PoliciesCommand {
    /// List policies
    List,
    /// Run a policy's backup now and follow it (exit 1 if it fails)
    Run {
        policy: String,
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

/// What the API answered: a status and its JSON (or text) body.
struct Answer {
    status: reqwest::StatusCode,
    body: Value,
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
        let mut request = self.http.request(method, self.url(path)).bearer_auth(&self.profile.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response =
            request.send().await.with_context(|| format!("the API at {} did not answer", self.profile.url))?;
        let status = response.status();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
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
            Answer { status, body }.ok()?;
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

pub fn policies(arg: &ProfileArg, command: PoliciesCommand, json: bool) -> Result<u8> {
    match command {
        PoliciesCommand::List => list(arg, "policies", json),
        PoliciesCommand::Run { policy, no_follow } => {
            let client = Client::from(arg)?;
            runtime()?.block_on(async {
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
            })
        }
    }
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

pub fn find(arg: &ProfileArg, path: &str, json: bool) -> Result<u8> {
    let client = Client::from(arg)?;
    let encoded: String = path
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let items = runtime()?.block_on(client.list_all(&format!("/v1/files?path={encoded}")))?;
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
