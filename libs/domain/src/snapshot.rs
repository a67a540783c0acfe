//! A snapshot: one committed backup in one repository, which may be locked (immutable until a
//! date: no forget or prune removes it before then) and is finally forgotten.
//!
//! A lock can only be extended, never shortened or lifted, so a compromised API key cannot make
//! a locked snapshot deletable early.

use arca_events::{
    AggregateType, Event, JobId, PolicyId, SnapshotCommitted, SnapshotForgotten, SnapshotLocked, SourceId, TargetId,
};
use chrono::{DateTime, Utc};

use crate::{Aggregate, Context, DomainError, validate};

/// The longest repository snapshot id accepted, in hex digits.
pub const MAX_REPO_SNAPSHOT_CHARS: usize = 128;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// What was committed; `None` until then.
    pub commit: Option<SnapshotCommitted>,
    /// Kept by every forget and prune until then.
    pub locked_until: Option<DateTime<Utc>>,
    pub forgotten: bool,
    /// The job that forgot it, if a job did.
    pub forgotten_by: Option<JobId>,
}

impl Snapshot {
    pub fn is_committed(&self) -> bool {
        self.commit.is_some()
    }

    /// True when a lock keeps it at `now`.
    pub fn is_locked_at(&self, now: DateTime<Utc>) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    fn require_committed(&self) -> Result<(), DomainError> {
        match self.commit {
            Some(_) => Ok(()),
            None => Err(DomainError::NotFound { aggregate: AggregateType::Snapshot }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotCommand {
    Commit {
        target: TargetId,
        repo_snapshot: String,
        time: DateTime<Utc>,
        host: String,
        paths: Vec<String>,
        tags: Vec<String>,
        source: Option<SourceId>,
        policy: Option<PolicyId>,
        job: Option<JobId>,
        files: u64,
        size_bytes: u64,
        added_bytes: u64,
        partial: bool,
    },
    /// Locks it until `until`, or extends an existing lock to `until`.
    Lock {
        until: DateTime<Utc>,
    },
    Forget {
        job: Option<JobId>,
    },
}

impl Aggregate for Snapshot {
    const TYPE: AggregateType = AggregateType::Snapshot;
    type Command = SnapshotCommand;

    fn handle(&self, command: &SnapshotCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        match command {
            SnapshotCommand::Commit {
                target,
                repo_snapshot,
                time,
                host,
                paths,
                tags,
                source,
                policy,
                job,
                files,
                size_bytes,
                added_bytes,
                partial,
            } => {
                if self.is_committed() {
                    return Err(DomainError::AlreadyExists { aggregate: AggregateType::Snapshot });
                }
                check_repo_snapshot(repo_snapshot)?;
                validate::not_blank("host", host)?;
                if paths.is_empty() {
                    return Err(DomainError::invalid("paths", "a snapshot holds at least one path"));
                }
                if tags.iter().any(|tag| tag.trim().is_empty()) {
                    return Err(DomainError::invalid("tags", "must not be empty"));
                }
                let committed = SnapshotCommitted {
                    target: *target,
                    repo_snapshot: repo_snapshot.clone(),
                    time: *time,
                    host: host.clone(),
                    paths: paths.clone(),
                    tags: tags.clone(),
                    source: *source,
                    policy: *policy,
                    job: *job,
                    files: *files,
                    size_bytes: *size_bytes,
                    added_bytes: *added_bytes,
                    partial: *partial,
                };
                Ok(vec![committed.into()])
            }
            SnapshotCommand::Lock { until } => {
                self.require_committed()?;
                if self.forgotten {
                    return Err(DomainError::Removed { aggregate: AggregateType::Snapshot });
                }
                if *until <= ctx.now {
                    return Err(DomainError::invalid("until", format!("{until} is not in the future")));
                }
                match self.locked_until {
                    Some(locked_until) if *until < locked_until => Err(DomainError::invalid(
                        "until",
                        format!("already locked until {locked_until}; a lock can be extended, never shortened"),
                    )),
                    Some(locked_until) if *until == locked_until => Ok(vec![]),
                    _ => Ok(vec![SnapshotLocked { until: *until }.into()]),
                }
            }
            SnapshotCommand::Forget { job } => {
                self.require_committed()?;
                if self.forgotten {
                    return Ok(vec![]);
                }
                match self.locked_until {
                    Some(until) if until > ctx.now => Err(DomainError::SnapshotLocked { until }),
                    _ => Ok(vec![SnapshotForgotten { job: *job }.into()]),
                }
            }
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::SnapshotCommitted(e) => self.commit = Some(e.clone()),
            Event::SnapshotLocked(e) => self.locked_until = Some(e.until),
            Event::SnapshotForgotten(e) => {
                self.forgotten = true;
                self.forgotten_by = e.job;
            }
            _ => {}
        }
    }
}

fn check_repo_snapshot(id: &str) -> Result<(), DomainError> {
    let hex = id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if id.is_empty() || id.len() > MAX_REPO_SNAPSHOT_CHARS || !hex {
        return Err(DomainError::invalid(
            "repo_snapshot",
            format!("must be 1 to {MAX_REPO_SNAPSHOT_CHARS} lowercase hex digits"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::testing::{AggregateTest, T0};

    fn committed() -> SnapshotCommitted {
        SnapshotCommitted {
            target: TargetId::new(),
            repo_snapshot: "0f".repeat(32),
            time: T0,
            host: "web-1".into(),
            paths: vec!["/srv".into()],
            tags: vec!["nightly".into()],
            source: Some(SourceId::new()),
            policy: None,
            job: Some(JobId::new()),
            files: 10,
            size_bytes: 1000,
            added_bytes: 100,
            partial: false,
        }
    }

    fn commit(c: SnapshotCommitted) -> SnapshotCommand {
        SnapshotCommand::Commit {
            target: c.target,
            repo_snapshot: c.repo_snapshot,
            time: c.time,
            host: c.host,
            paths: c.paths,
            tags: c.tags,
            source: c.source,
            policy: c.policy,
            job: c.job,
            files: c.files,
            size_bytes: c.size_bytes,
            added_bytes: c.added_bytes,
            partial: c.partial,
        }
    }

    fn locked_until(until: DateTime<Utc>) -> Vec<Event> {
        vec![committed().into(), SnapshotLocked { until }.into()]
    }

    #[test]
    fn commit_once() {
        let c = committed();
        let state =
            AggregateTest::<Snapshot>::given(vec![]).when(commit(c.clone())).then_expect_events(vec![c.clone().into()]);
        assert_eq!(state.commit.as_ref(), Some(&c));
        AggregateTest::<Snapshot>::given(vec![c.clone().into()])
            .when(commit(c))
            .then_expect_error(DomainError::AlreadyExists { aggregate: AggregateType::Snapshot });
    }

    #[test]
    fn commit_checks_its_values() {
        for (field, c) in [
            ("repo_snapshot", SnapshotCommitted { repo_snapshot: "".into(), ..committed() }),
            ("repo_snapshot", SnapshotCommitted { repo_snapshot: "XYZ".into(), ..committed() }),
            ("host", SnapshotCommitted { host: " ".into(), ..committed() }),
            ("paths", SnapshotCommitted { paths: vec![], ..committed() }),
            ("tags", SnapshotCommitted { tags: vec!["".into()], ..committed() }),
        ] {
            AggregateTest::<Snapshot>::given(vec![]).when(commit(c)).then_expect_invalid(field);
        }
    }

    #[test]
    fn nothing_before_commit() {
        for command in [SnapshotCommand::Lock { until: T0 + TimeDelta::days(1) }, SnapshotCommand::Forget { job: None }]
        {
            AggregateTest::<Snapshot>::given(vec![])
                .when(command)
                .then_expect_error(DomainError::NotFound { aggregate: AggregateType::Snapshot });
        }
    }

    #[test]
    fn a_locked_snapshot_cannot_be_forgotten_before_its_date() {
        let until = T0 + TimeDelta::days(30);
        AggregateTest::<Snapshot>::given(locked_until(until))
            .at(until - TimeDelta::seconds(1))
            .when(SnapshotCommand::Forget { job: None })
            .then_expect_error(DomainError::SnapshotLocked { until });
    }

    #[test]
    fn a_locked_snapshot_can_be_forgotten_from_its_date() {
        let until = T0 + TimeDelta::days(30);
        let job = JobId::new();
        for now in [until, until + TimeDelta::days(1)] {
            let state = AggregateTest::<Snapshot>::given(locked_until(until))
                .at(now)
                .when(SnapshotCommand::Forget { job: Some(job) })
                .then_expect_events(vec![SnapshotForgotten { job: Some(job) }.into()]);
            assert!(state.forgotten && state.forgotten_by == Some(job));
        }
    }

    #[test]
    fn forget_twice_produces_nothing() {
        AggregateTest::<Snapshot>::given(vec![committed().into(), SnapshotForgotten { job: None }.into()])
            .when(SnapshotCommand::Forget { job: None })
            .then_expect_events(vec![]);
    }

    #[test]
    fn locks_lie_in_the_future_and_only_grow() {
        let until = T0 + TimeDelta::days(30);
        for past in [T0, T0 - TimeDelta::days(1)] {
            AggregateTest::<Snapshot>::given(vec![committed().into()])
                .when(SnapshotCommand::Lock { until: past })
                .then_expect_invalid("until");
        }
        let state = AggregateTest::<Snapshot>::given(vec![committed().into()])
            .when(SnapshotCommand::Lock { until })
            .then_expect_events(vec![SnapshotLocked { until }.into()]);
        assert!(state.is_locked_at(T0) && !state.is_locked_at(until));
        AggregateTest::<Snapshot>::given(locked_until(until))
            .when(SnapshotCommand::Lock { until: until - TimeDelta::seconds(1) })
            .then_expect_invalid("until");
        AggregateTest::<Snapshot>::given(locked_until(until))
            .when(SnapshotCommand::Lock { until })
            .then_expect_events(vec![]);
        let later = until + TimeDelta::days(365);
        let state = AggregateTest::<Snapshot>::given(locked_until(until))
            .when(SnapshotCommand::Lock { until: later })
            .then_expect_events(vec![SnapshotLocked { until: later }.into()]);
        assert_eq!(state.locked_until, Some(later));
    }

    #[test]
    fn an_expired_lock_can_be_renewed() {
        let until = T0 + TimeDelta::days(1);
        let renewed = T0 + TimeDelta::days(10);
        AggregateTest::<Snapshot>::given(locked_until(until))
            .at(until + TimeDelta::days(1))
            .when(SnapshotCommand::Lock { until: renewed })
            .then_expect_events(vec![SnapshotLocked { until: renewed }.into()]);
    }

    #[test]
    fn a_forgotten_snapshot_cannot_be_locked() {
        AggregateTest::<Snapshot>::given(vec![committed().into(), SnapshotForgotten { job: None }.into()])
            .when(SnapshotCommand::Lock { until: T0 + TimeDelta::days(1) })
            .then_expect_error(DomainError::Removed { aggregate: AggregateType::Snapshot });
    }
}
