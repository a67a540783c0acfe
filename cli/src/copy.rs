//! `arca copy`: copies snapshots into another repository, moving only the blobs it lacks.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use arca_repo::copy::{CopyOptions, CopyProgress, copy_snapshots};
use arca_repo::{Backend, Error, InitOptions, Repository, Target};
use clap::Args;

use crate::{Global, open, passphrase, print_json, progress, target_options};

#[derive(Args)]
pub struct CopyArgs {
    /// Snapshots to copy: ids, id prefixes or `latest`
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    snapshots: Vec<String>,
    /// Copy every snapshot of the source
    #[arg(long)]
    all: bool,
    /// Destination repository URL (target settings are the source's: flags, config file, environment)
    #[arg(long)]
    to: String,
    /// File holding the destination's passphrase (else ARCA_TO_PASSWORD)
    #[arg(long, env = "ARCA_TO_PASSWORD_FILE")]
    to_password_file: Option<PathBuf>,
    /// Create the destination, as a copy-compatible repository, if there is none
    #[arg(long)]
    init: bool,
}

pub fn run(g: &Global, args: CopyArgs) -> Result<u8> {
    let source = open(g)?;
    let to_pass = passphrase(args.to_password_file.as_ref(), "ARCA_TO_PASSWORD", "--to-password-file")?;
    let to_backend = Backend::open(&Target::parse(&args.to)?, &target_options(g)?)?;
    let destination = match Repository::open(to_backend.clone(), &to_pass) {
        Ok(repo) => repo,
        Err(Error::NotARepository(_)) if args.init => {
            let options = InitOptions {
                compression_level: source.config().compression_level,
                pack_size: source.config().pack_size,
                ..InitOptions::default()
            };
            let repo = Repository::init_copy_of(to_backend, &to_pass, &source, &options)?;
            if !g.json && !g.quiet {
                println!("created repository {} at {} as a copy of {}", repo.config().id, args.to, source.config().id);
            }
            repo
        }
        Err(Error::NotARepository(url)) => {
            bail!("no repository at `{url}` (give --init to create it as a copy of the source)")
        }
        Err(Error::WrongPassphrase) => bail!("destination `{}`: {}", args.to, Error::WrongPassphrase),
        Err(e) => return Err(e.into()),
    };
    let selectors = if args.all { source.snapshots()?.into_keys().collect() } else { args.snapshots };
    let progress = Arc::new(CopyProgress::default());
    let reporter = progress::show_copy(g.json, g.quiet || !std::io::stderr().is_terminal(), progress.clone());
    let report = copy_snapshots(&source, &destination, &selectors, &CopyOptions { progress: Some(progress) });
    drop(reporter);
    let report = report?;
    if g.json {
        let mut summary = serde_json::to_value(&report)?;
        summary["type"] = "summary".into();
        print_json(&summary);
    } else if !g.quiet {
        for s in &report.snapshots {
            let what = if s.copied { "copied" } else { "already there" };
            println!("snapshot {} -> {} ({what})", &s.source_id[..8], &s.destination_id[..8]);
        }
        println!(
            "{} snapshot(s) copied, {} already there; {} blobs copied ({} bytes, {} stored), {} already there, in {:.1}s",
            report.snapshots_copied,
            report.snapshots_skipped,
            report.blobs_copied,
            report.bytes_copied,
            report.bytes_stored,
            report.blobs_skipped,
            report.duration_ms as f64 / 1000.0
        );
    }
    Ok(0)
}
