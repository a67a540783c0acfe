//! An export: an image snapshot served read-only over NBD by a recovery instance, so a
//! hypervisor or `qemu-img` reads (or boots) it at once — instant recovery. It is served by a
//! job of its own until it is stopped; a client reaches it only by the export name shown
//! once when it was requested (the log keeps just the name's hash).

use arca_events::{AggregateType, Event, ExportRequested, ExportStarted, ExportStopped, JobId, SnapshotId};

use crate::{Aggregate, Context, DomainError, validate};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExportStatus {
    #[default]
    Missing,
    Requested,
    Serving,
    Stopped,
    Failed,
}

impl ExportStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExportStatus::Missing => "missing",
            ExportStatus::Requested => "requested",
            ExportStatus::Serving => "serving",
            ExportStatus::Stopped => "stopped",
            ExportStatus::Failed => "failed",
        }
    }

    /// Whether it is over (stopped or failed).
    pub fn is_over(&self) -> bool {
        matches!(self, ExportStatus::Stopped | ExportStatus::Failed)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Export {
    pub status: ExportStatus,
    pub snapshot: SnapshotId,
    pub writable: bool,
    pub name_hash: String,
    pub job: JobId,
    pub site: Option<String>,
    /// `host:port` while (or where last) served.
    pub address: Option<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportCommand {
    Request {
        snapshot: SnapshotId,
        writable: bool,
        name_hash: String,
        job: JobId,
        site: Option<String>,
    },
    /// A recovery instance serves it (again, after a restart: at a new address).
    Serve {
        address: String,
    },
    Stop {
        error: Option<String>,
    },
}

impl ExportCommand {
    fn name(&self) -> &'static str {
        match self {
            ExportCommand::Request { .. } => "request",
            ExportCommand::Serve { .. } => "serve",
            ExportCommand::Stop { .. } => "stop",
        }
    }
}

impl Aggregate for Export {
    const TYPE: AggregateType = AggregateType::Export;
    type Command = ExportCommand;

    fn handle(&self, command: &ExportCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        let event: Event = match (self.status, command) {
            (ExportStatus::Missing, ExportCommand::Request { snapshot, writable, name_hash, job, site }) => {
                ctx.tenant.require_active()?;
                if name_hash.len() != 64 || !name_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(DomainError::invalid("name_hash", "must be 64 hex digits"));
                }
                if let Some(site) = site {
                    validate::site("site", site)?;
                }
                ExportRequested {
                    snapshot: *snapshot,
                    writable: *writable,
                    name_hash: name_hash.clone(),
                    job: *job,
                    site: site.clone(),
                }
                .into()
            }
            (ExportStatus::Missing, _) => return Err(DomainError::NotFound { aggregate: AggregateType::Export }),
            (ExportStatus::Requested | ExportStatus::Serving, ExportCommand::Serve { address }) => {
                validate::not_blank("address", address)?;
                ExportStarted { address: address.clone() }.into()
            }
            (ExportStatus::Requested | ExportStatus::Serving, ExportCommand::Stop { error }) => {
                if let Some(error) = error {
                    validate::not_blank("error", error)?;
                }
                ExportStopped { error: error.clone() }.into()
            }
            (status, command) => return Err(DomainError::illegal(status.as_str(), command.name())),
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::ExportRequested(e) => {
                self.status = ExportStatus::Requested;
                self.snapshot = e.snapshot;
                self.writable = e.writable;
                self.name_hash.clone_from(&e.name_hash);
                self.job = e.job;
                self.site.clone_from(&e.site);
            }
            Event::ExportStarted(e) => {
                self.status = ExportStatus::Serving;
                self.address = Some(e.address.clone());
            }
            Event::ExportStopped(e) => {
                self.status = if e.error.is_some() { ExportStatus::Failed } else { ExportStatus::Stopped };
                self.error.clone_from(&e.error);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::AggregateTest;

    fn request(name_hash: &str) -> ExportCommand {
        ExportCommand::Request {
            snapshot: SnapshotId::new(),
            writable: false,
            name_hash: name_hash.into(),
            job: JobId::new(),
            site: None,
        }
    }

    fn requested() -> Event {
        ExportRequested {
            snapshot: SnapshotId::new(),
            writable: false,
            name_hash: "ab".repeat(32),
            job: JobId::new(),
            site: None,
        }
        .into()
    }

    #[test]
    fn request_serve_and_stop() {
        let state = AggregateTest::<Export>::given(vec![]).when(request(&"ab".repeat(32))).then_expect_ok();
        assert_eq!(state.status, ExportStatus::Requested);
        let state = AggregateTest::<Export>::given(vec![requested()])
            .when(ExportCommand::Serve { address: "127.0.0.1:10809".into() })
            .then_expect_ok();
        assert_eq!(state.address.as_deref(), Some("127.0.0.1:10809"));
        let serving: Event = ExportStarted { address: "127.0.0.1:10809".into() }.into();
        let state = AggregateTest::<Export>::given(vec![requested(), serving.clone()])
            .when(ExportCommand::Serve { address: "10.0.0.2:10809".into() })
            .then_expect_ok();
        assert_eq!(state.address.as_deref(), Some("10.0.0.2:10809"), "served again after a restart");
        let state = AggregateTest::<Export>::given(vec![requested(), serving])
            .when(ExportCommand::Stop { error: None })
            .then_expect_ok();
        assert_eq!(state.status, ExportStatus::Stopped);
    }

    #[test]
    fn the_name_hash_is_checked() {
        for hash in ["", "xyz", &"zz".repeat(32)] {
            AggregateTest::<Export>::given(vec![]).when(request(hash)).then_expect_invalid("name_hash");
        }
    }

    #[test]
    fn a_stopped_export_stays_stopped() {
        let stopped: Event = ExportStopped { error: Some("the repository is gone".into()) }.into();
        let mut state = Export::default();
        for event in [requested(), stopped.clone()] {
            state.apply(&event);
        }
        assert_eq!(state.status, ExportStatus::Failed);
        AggregateTest::<Export>::given(vec![requested(), stopped.clone()])
            .when(ExportCommand::Serve { address: "127.0.0.1:1".into() })
            .then_expect_error(DomainError::illegal("failed", "serve"));
        AggregateTest::<Export>::given(vec![])
            .when(ExportCommand::Stop { error: None })
            .then_expect_error(DomainError::NotFound { aggregate: AggregateType::Export });
    }
}
