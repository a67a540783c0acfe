//! `arca server`: starts its own nats-server, projects into SQLite under the data folder,
//! answers catalog queries, and stops cleanly (with its nats-server) on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arca_bus::{Bus, BusConfig, Version};
use arca_events::*;
use chrono::Utc;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `arca server` on its own nats-server at `port`, with its data in `data`.
fn server_on(data: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arca"));
    command
        .args(["server", "--http-addr", "127.0.0.1:0", "--nbd-addr", "127.0.0.1:0", "--nats-port", &port.to_string()])
        .arg("--data-dir")
        .arg(data)
        .env("ARCA_NATS_SERVER", arca_testkit::tool("nats-server"))
        .stdout(Stdio::null());
    command
}

#[test]
fn server_runs_the_platform_on_its_own_nats_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = server_on(data.path(), port).stderr(Stdio::piped()).spawn().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let bus = loop {
            if let Ok(bus) = Bus::connect(BusConfig::new(url.clone())).await
                && bus
                    .request::<_, serde_json::Value>(
                        "arca.q.catalog.status",
                        &serde_json::json!({}),
                        None,
                        Duration::from_secs(1),
                    )
                    .await
                    .is_ok()
            {
                break bus;
            }
            assert!(Instant::now() < deadline, "arca server never answered on {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let tenant = TenantId::new();
        let event = Event::from(TenantCreated { name: "served".into(), quota_bytes: None });
        let store = bus.event_store().await.unwrap();
        let aggregate = AggregateRef::new(tenant, AggregateType::Tenant, tenant);
        store.append(aggregate, Version::default(), &[event], &Metadata::new_root(), Utc::now()).await.unwrap();
        loop {
            let found = bus
                .request::<_, serde_json::Value>(
                    "arca.q.catalog.tenants.get",
                    &serde_json::json!({ "tenant": tenant, "id": tenant }),
                    None,
                    Duration::from_secs(1),
                )
                .await;
            if let Ok(row) = found {
                assert_eq!(row["name"], "served");
                break;
            }
            assert!(Instant::now() < deadline, "the tenant never reached the catalog");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(data.path().join("catalog.db").is_file());
    assert!(data.path().join("nats").is_dir());

    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "arca server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "its nats-server stopped too");
}

#[test]
fn server_refuses_a_taken_port_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_arca"))
        .args([
            "server",
            "--http-addr",
            "127.0.0.1:0",
            "--nbd-addr",
            "127.0.0.1:0",
            "--nats-port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("port {port} is taken")), "{stderr}");
}

/// `arca server` killed with SIGKILL leaves no nats-server behind (it stops with its parent,
/// or the next start stops what is left): restarting works every time.
#[test]
fn server_restarts_after_kill_9_five_times_out_of_five() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    for round in 1..=5 {
        let log_path = data.path().join(format!("server-{round}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut server = server_on(data.path(), port).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("arca server: API") {
                break;
            }
            if let Some(status) = server.try_wait().unwrap() {
                panic!("start {round} of 5 failed ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "start {round} of 5 never served:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server.kill().unwrap();
        server.wait().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "the last nats-server outlived its arca server");
        std::thread::sleep(Duration::from_millis(50));
    }
}
