//! A restore: bring (part of) a snapshot back, into a folder on a host, into another
//! repository, or (a database dump) into a new PostgreSQL database, through a job of its own;
//! it ends once, in success or failure.

use arca_events::{
    AggregateType, Event, JobId, RestoreDestination, RestoreFailed, RestoreRequested, RestoreSucceeded, SnapshotId,
};

use crate::{Aggregate, Context, DomainError, validate};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RestoreStatus {
    #[default]
    Missing,
    Requested,
    Succeeded,
    Failed,
}

impl RestoreStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RestoreStatus::Missing => "missing",
            RestoreStatus::Requested => "requested",
            RestoreStatus::Succeeded => "succeeded",
            RestoreStatus::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restore {
    pub status: RestoreStatus,
    pub snapshot: SnapshotId,
    /// Paths (globs) to restore; empty means everything.
    pub paths: Vec<String>,
    /// `None` until requested.
    pub destination: Option<RestoreDestination>,
    pub job: JobId,
    /// What a successful restore reported.
    pub outcome: Option<RestoreSucceeded>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreCommand {
    Request { snapshot: SnapshotId, paths: Vec<String>, destination: RestoreDestination, job: JobId },
    Succeed { files: u64, bytes: u64, verified: bool },
    Fail { error: String },
}

impl RestoreCommand {
    fn name(&self) -> &'static str {
        match self {
            RestoreCommand::Request { .. } => "request",
            RestoreCommand::Succeed { .. } => "succeed",
            RestoreCommand::Fail { .. } => "fail",
        }
    }
}

impl Aggregate for Restore {
    const TYPE: AggregateType = AggregateType::Restore;
    type Command = RestoreCommand;

    fn handle(&self, command: &RestoreCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        let event: Event = match (self.status, command) {
            (RestoreStatus::Missing, RestoreCommand::Request { snapshot, paths, destination, job }) => {
                ctx.tenant.require_active()?;
                for path in paths {
                    validate::not_blank("paths", path)?;
                    validate::relative_free_path("paths", path)?;
                }
                match destination {
                    RestoreDestination::Directory { path, .. } => validate::absolute_path("destination", path)?,
                    RestoreDestination::Database { name, from, .. } => {
                        validate::new_database_name("destination", name)?;
                        if let Some(from) = from {
                            validate::database_name("from", from)?;
                        }
                        if !paths.is_empty() {
                            return Err(DomainError::invalid(
                                "paths",
                                "a database restore takes one dump of the snapshot whole: name it with `from`, not with paths",
                            ));
                        }
                    }
                    RestoreDestination::Target { .. } => {}
                }
                if let Some(site) = destination.site() {
                    validate::site("site", site)?;
                }
                RestoreRequested {
                    snapshot: *snapshot,
                    paths: paths.clone(),
                    destination: destination.clone(),
                    job: *job,
                }
                .into()
            }
            (RestoreStatus::Missing, _) => return Err(DomainError::NotFound { aggregate: AggregateType::Restore }),
            (RestoreStatus::Requested, RestoreCommand::Succeed { files, bytes, verified }) => {
                RestoreSucceeded { files: *files, bytes: *bytes, verified: *verified }.into()
            }
            (RestoreStatus::Requested, RestoreCommand::Fail { error }) => {
                validate::not_blank("error", error)?;
                RestoreFailed { error: error.clone() }.into()
            }
            (status, command) => return Err(DomainError::illegal(status.as_str(), command.name())),
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::RestoreRequested(e) => {
                self.status = RestoreStatus::Requested;
                self.snapshot = e.snapshot;
                self.paths.clone_from(&e.paths);
                self.destination = Some(e.destination.clone());
                self.job = e.job;
            }
            Event::RestoreSucceeded(e) => {
                self.status = RestoreStatus::Succeeded;
                self.outcome = Some(e.clone());
            }
            Event::RestoreFailed(e) => {
                self.status = RestoreStatus::Failed;
                self.error = Some(e.error.clone());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use arca_events::TargetId;

    use super::*;
    use crate::testing::AggregateTest;
    use crate::{TenantFacts, TenantStatus};

    fn to_folder(path: &str) -> RestoreDestination {
        RestoreDestination::Directory { path: path.into(), site: None }
    }

    fn request(paths: &[&str], destination: RestoreDestination) -> RestoreCommand {
        RestoreCommand::Request {
            snapshot: SnapshotId::new(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            destination,
            job: JobId::new(),
        }
    }

    fn requested() -> Event {
        RestoreRequested {
            snapshot: SnapshotId::new(),
            paths: vec![],
            destination: to_folder("/srv/restore"),
            job: JobId::new(),
        }
        .into()
    }

    #[test]
    fn request_a_restore() {
        let state = AggregateTest::<Restore>::given(vec![])
            .when(request(&["/srv/www/*.html", "etc/nginx"], to_folder("/srv/restore")))
            .then_expect_ok();
        assert_eq!(state.status, RestoreStatus::Requested);
        AggregateTest::<Restore>::given(vec![])
            .when(request(&[], RestoreDestination::Target { target: TargetId::new() }))
            .then_expect_ok();
    }

    #[test]
    fn request_checks_paths_and_destination() {
        for paths in [&["../etc/shadow"][..], &["/srv/../../etc"][..], &[""][..]] {
            AggregateTest::<Restore>::given(vec![])
                .when(request(paths, to_folder("/srv/restore")))
                .then_expect_invalid("paths");
        }
        for path in ["restore", "/srv/../etc", ""] {
            AggregateTest::<Restore>::given(vec![])
                .when(request(&[], to_folder(path)))
                .then_expect_invalid("destination");
        }
        AggregateTest::<Restore>::given(vec![])
            .when(request(&[], RestoreDestination::Directory { path: "/srv/restore".into(), site: Some("a.b".into()) }))
            .then_expect_invalid("site");
    }

    fn to_database(name: &str, from: Option<&str>) -> RestoreDestination {
        RestoreDestination::Database { name: name.into(), from: from.map(Into::into), site: None }
    }

    #[test]
    fn a_dump_is_restored_into_a_new_database_with_a_safe_name() {
        AggregateTest::<Restore>::given(vec![]).when(request(&[], to_database("app_copy", None))).then_expect_ok();
        AggregateTest::<Restore>::given(vec![])
            .when(request(&[], to_database("app-2026", Some("billing db"))))
            .then_expect_ok();
        for name in ["", "app copy", "-app", "dbname=x host=evil", "postgres", "template0", &"d".repeat(64)] {
            AggregateTest::<Restore>::given(vec![])
                .when(request(&[], to_database(name, None)))
                .then_expect_invalid("destination");
        }
        for from in ["", "a/b"] {
            AggregateTest::<Restore>::given(vec![])
                .when(request(&[], to_database("app_copy", Some(from))))
                .then_expect_invalid("from");
        }
        AggregateTest::<Restore>::given(vec![])
            .when(request(&["/app.pgdump"], to_database("app_copy", None)))
            .then_expect_invalid("paths");
        AggregateTest::<Restore>::given(vec![])
            .when(request(
                &[],
                RestoreDestination::Database { name: "app_copy".into(), from: None, site: Some("x y".into()) },
            ))
            .then_expect_invalid("site");
    }

    #[test]
    fn an_over_quota_tenant_can_still_restore() {
        AggregateTest::<Restore>::given(vec![])
            .with_tenant(TenantFacts { status: TenantStatus::Active, quota_bytes: Some(1), used_bytes: 5 })
            .when(request(&[], to_folder("/srv/restore")))
            .then_expect_ok();
    }

    #[test]
    fn a_suspended_tenant_cannot_start_a_restore() {
        AggregateTest::<Restore>::given(vec![])
            .with_tenant(TenantFacts { status: TenantStatus::Suspended, ..TenantFacts::active() })
            .when(request(&[], to_folder("/srv/restore")))
            .then_expect_error(DomainError::TenantSuspended);
    }

    #[test]
    fn it_ends_once() {
        let state = AggregateTest::<Restore>::given(vec![requested()])
            .when(RestoreCommand::Succeed { files: 3, bytes: 30, verified: true })
            .then_expect_events(vec![RestoreSucceeded { files: 3, bytes: 30, verified: true }.into()]);
        assert_eq!(state.status, RestoreStatus::Succeeded);
        let state = AggregateTest::<Restore>::given(vec![requested()])
            .when(RestoreCommand::Fail { error: "destination full".into() })
            .then_expect_events(vec![RestoreFailed { error: "destination full".into() }.into()]);
        assert_eq!(state.status, RestoreStatus::Failed);
        AggregateTest::<Restore>::given(vec![requested()])
            .when(RestoreCommand::Fail { error: " ".into() })
            .then_expect_invalid("error");

        let ends: [(Event, &str); 2] = [
            (RestoreSucceeded { files: 1, bytes: 1, verified: false }.into(), "succeeded"),
            (RestoreFailed { error: "x".into() }.into(), "failed"),
        ];
        for (end, from) in ends {
            for command in [
                request(&[], to_folder("/srv/restore")),
                RestoreCommand::Succeed { files: 1, bytes: 1, verified: true },
                RestoreCommand::Fail { error: "again".into() },
            ] {
                let name = command.name();
                AggregateTest::<Restore>::given(vec![requested(), end.clone()])
                    .when(command)
                    .then_expect_error(DomainError::illegal(from, name));
            }
        }
        AggregateTest::<Restore>::given(vec![requested()])
            .when(request(&[], to_folder("/srv/restore")))
            .then_expect_error(DomainError::illegal("requested", "request"));
    }

    #[test]
    fn nothing_before_request() {
        for command in
            [RestoreCommand::Succeed { files: 1, bytes: 1, verified: true }, RestoreCommand::Fail { error: "x".into() }]
        {
            AggregateTest::<Restore>::given(vec![])
                .when(command)
                .then_expect_error(DomainError::NotFound { aggregate: AggregateType::Restore });
        }
    }
}
