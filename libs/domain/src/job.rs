//! A job: one piece of work on the queue (a backup, copy, verify, forget, prune, restore or
//! replication run) and the states it goes through. Where each command leads:
//!
//! | from | request | start | checkpoint | succeed | fail | cancel |
//! |---|---|---|---|---|---|---|
//! | missing | requested | | | | | |
//! | requested | | running | | | failed | cancelled |
//! | running | | running, with a higher attempt | running | succeeded | failed | cancelled |
//! | succeeded, failed, cancelled | | | | | | |
//!
//! Empty cells are refused ([`DomainError::IllegalTransition`], or `NotFound` for a missing
//! job). A requested job can fail without ever starting: the queue dead-lettered it. A running
//! job is started again when the queue redelivers it after its worker died; the attempt must
//! grow, so a late duplicate of an old start is refused.
//!
//! Requesting work that adds data ([`JobKind::adds_data`]) is refused while the tenant is over
//! its quota, and requesting any work while it is suspended; work already requested may still
//! run, finish or fail.

use arca_events::{
    AggregateType, BackupMode, Event, JobCancelled, JobCheckpointed, JobFailed, JobKind, JobRequested, JobStarted,
    JobSucceeded, PolicyId, SnapshotId, SourceId, TargetId, Trigger,
};

use crate::{Aggregate, Context, DomainError, validate};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Never requested.
    #[default]
    Missing,
    Requested,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Missing,
        JobStatus::Requested,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Missing => "missing",
            JobStatus::Requested => "requested",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// True once the job is over: it accepts no command again.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// Progress as last checkpointed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub bytes_done: u64,
    pub files_done: u64,
    pub packs_uploaded: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Job {
    pub status: JobStatus,
    /// `None` until requested.
    pub kind: Option<JobKind>,
    pub trigger: Option<Trigger>,
    pub policy: Option<PolicyId>,
    pub source: Option<SourceId>,
    pub target: Option<TargetId>,
    pub snapshot: Option<SnapshotId>,
    pub mode: Option<BackupMode>,
    pub site: Option<String>,
    /// The worker of the latest attempt.
    pub worker: Option<String>,
    /// The latest attempt, from 1; 0 before the first start.
    pub attempt: u32,
    pub progress: JobProgress,
    /// What a successful job reported.
    pub outcome: Option<JobSucceeded>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub dead_lettered: bool,
    pub cancel_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobCommand {
    Request {
        kind: JobKind,
        trigger: Trigger,
        policy: Option<PolicyId>,
        source: Option<SourceId>,
        target: Option<TargetId>,
        snapshot: Option<SnapshotId>,
        mode: Option<BackupMode>,
        site: Option<String>,
    },
    Start {
        worker: String,
        attempt: u32,
    },
    Checkpoint {
        bytes_done: u64,
        files_done: u64,
        packs_uploaded: u64,
    },
    Succeed {
        snapshot: Option<SnapshotId>,
        bytes_read: u64,
        bytes_added: u64,
        files: u64,
        duration_ms: u64,
    },
    Fail {
        error: String,
        attempts: u32,
        dead_lettered: bool,
    },
    Cancel {
        reason: Option<String>,
    },
}

impl JobCommand {
    /// A request for a `kind` job naming nothing yet; `with_*` fill in what it works on.
    pub fn request(kind: JobKind, trigger: Trigger) -> JobCommand {
        JobCommand::Request {
            kind,
            trigger,
            policy: None,
            source: None,
            target: None,
            snapshot: None,
            mode: None,
            site: None,
        }
    }

    /// This request on `id` (no effect on other commands).
    pub fn with_snapshot(mut self, id: SnapshotId) -> JobCommand {
        if let JobCommand::Request { snapshot, .. } = &mut self {
            *snapshot = Some(id);
        }
        self
    }

    /// This request reading `id` (no effect on other commands).
    pub fn with_source(mut self, id: SourceId) -> JobCommand {
        if let JobCommand::Request { source, .. } = &mut self {
            *source = Some(id);
        }
        self
    }

    /// This request on target `id` (no effect on other commands).
    pub fn with_target(mut self, id: TargetId) -> JobCommand {
        if let JobCommand::Request { target, .. } = &mut self {
            *target = Some(id);
        }
        self
    }

    /// This request for the workers of `label` only (no effect on other commands).
    pub fn with_site(mut self, label: Option<String>) -> JobCommand {
        if let JobCommand::Request { site, .. } = &mut self {
            *site = label;
        }
        self
    }

    /// The command as errors name it.
    pub fn name(&self) -> &'static str {
        match self {
            JobCommand::Request { .. } => "request",
            JobCommand::Start { .. } => "start",
            JobCommand::Checkpoint { .. } => "checkpoint",
            JobCommand::Succeed { .. } => "succeed",
            JobCommand::Fail { .. } => "fail",
            JobCommand::Cancel { .. } => "cancel",
        }
    }
}

impl Aggregate for Job {
    const TYPE: AggregateType = AggregateType::Job;
    type Command = JobCommand;

    fn handle(&self, command: &JobCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        let illegal = || Err(DomainError::illegal(self.status.as_str(), command.name()));
        let event: Event = match (self.status, command) {
            (status, _) if status.is_terminal() => return illegal(),
            (
                JobStatus::Missing,
                JobCommand::Request { kind, trigger, policy, source, target, snapshot, mode, site },
            ) => {
                ctx.tenant.require_active()?;
                if kind.adds_data()
                    && let Some(quota) = ctx.tenant.quota_bytes
                    && ctx.tenant.used_bytes >= quota
                {
                    return Err(DomainError::QuotaExceeded { used: ctx.tenant.used_bytes, quota });
                }
                let requested = JobRequested {
                    kind: *kind,
                    trigger: trigger.clone(),
                    policy: *policy,
                    source: *source,
                    target: *target,
                    snapshot: *snapshot,
                    mode: *mode,
                    site: site.clone(),
                };
                check_request(&requested)?;
                requested.into()
            }
            (JobStatus::Missing, _) => return Err(DomainError::NotFound { aggregate: AggregateType::Job }),
            (JobStatus::Requested | JobStatus::Running, JobCommand::Start { worker, attempt }) => {
                if self.status == JobStatus::Running && *attempt <= self.attempt {
                    return illegal();
                }
                validate::not_blank("worker", worker)?;
                if *attempt == 0 {
                    return Err(DomainError::invalid("attempt", "counts from 1"));
                }
                JobStarted { worker: worker.clone(), attempt: *attempt }.into()
            }
            (JobStatus::Running, JobCommand::Checkpoint { bytes_done, files_done, packs_uploaded }) => {
                let progress =
                    JobProgress { bytes_done: *bytes_done, files_done: *files_done, packs_uploaded: *packs_uploaded };
                if progress == self.progress {
                    return Ok(vec![]);
                }
                JobCheckpointed { bytes_done: *bytes_done, files_done: *files_done, packs_uploaded: *packs_uploaded }
                    .into()
            }
            (JobStatus::Running, JobCommand::Succeed { snapshot, bytes_read, bytes_added, files, duration_ms }) => {
                if self.kind == Some(JobKind::Backup) && snapshot.is_none() {
                    return Err(DomainError::invalid("snapshot", "a successful backup names the snapshot it made"));
                }
                JobSucceeded {
                    snapshot: *snapshot,
                    bytes_read: *bytes_read,
                    bytes_added: *bytes_added,
                    files: *files,
                    duration_ms: *duration_ms,
                }
                .into()
            }
            (JobStatus::Requested | JobStatus::Running, JobCommand::Fail { error, attempts, dead_lettered }) => {
                validate::not_blank("error", error)?;
                JobFailed { error: error.clone(), attempts: *attempts, dead_lettered: *dead_lettered }.into()
            }
            (JobStatus::Requested | JobStatus::Running, JobCommand::Cancel { reason }) => {
                JobCancelled { reason: reason.clone() }.into()
            }
            _ => return illegal(),
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::JobRequested(e) => {
                self.status = JobStatus::Requested;
                self.kind = Some(e.kind);
                self.trigger = Some(e.trigger.clone());
                self.policy = e.policy;
                self.source = e.source;
                self.target = e.target;
                self.snapshot = e.snapshot;
                self.mode = e.mode;
                self.site.clone_from(&e.site);
            }
            Event::JobStarted(e) => {
                self.status = JobStatus::Running;
                self.worker = Some(e.worker.clone());
                self.attempt = e.attempt;
            }
            Event::JobCheckpointed(e) => {
                self.progress = JobProgress {
                    bytes_done: e.bytes_done,
                    files_done: e.files_done,
                    packs_uploaded: e.packs_uploaded,
                };
            }
            Event::JobSucceeded(e) => {
                self.status = JobStatus::Succeeded;
                self.outcome = Some(e.clone());
            }
            Event::JobFailed(e) => {
                self.status = JobStatus::Failed;
                self.error = Some(e.error.clone());
                self.dead_lettered = e.dead_lettered;
            }
            Event::JobCancelled(e) => {
                self.status = JobStatus::Cancelled;
                self.cancel_reason.clone_from(&e.reason);
            }
            _ => {}
        }
    }
}

/// What each kind of job needs to know to run.
fn check_request(request: &JobRequested) -> Result<(), DomainError> {
    let missing =
        |field: &'static str| Err(DomainError::invalid(field, format!("a {} job needs one", request.kind.as_str())));
    match request.kind {
        JobKind::Backup if request.source.is_none() => return missing("source"),
        JobKind::Backup | JobKind::Copy | JobKind::Prune if request.target.is_none() => return missing("target"),
        JobKind::Copy | JobKind::Restore if request.snapshot.is_none() => return missing("snapshot"),
        JobKind::Verify if request.target.is_none() && request.snapshot.is_none() => {
            return Err(DomainError::invalid("target", "a verify job needs a target or a snapshot"));
        }
        _ => {}
    }
    if request.mode.is_some() && request.kind != JobKind::Backup {
        return Err(DomainError::invalid("mode", "only backups have a mode"));
    }
    if matches!(request.trigger, Trigger::Schedule { .. }) && request.policy.is_none() {
        return Err(DomainError::invalid("policy", "a scheduled job names the policy that fired"));
    }
    if let Some(site) = &request.site {
        validate::site("site", site)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arca_events::JobId;

    use super::*;
    use crate::testing::{AggregateTest, T0};
    use crate::{TenantFacts, TenantStatus};

    fn request(kind: JobKind) -> JobCommand {
        let needs_source = kind == JobKind::Backup;
        let needs_snapshot = matches!(kind, JobKind::Copy | JobKind::Restore | JobKind::Forget);
        JobCommand::Request {
            kind,
            trigger: Trigger::Manual,
            policy: None,
            source: needs_source.then(SourceId::new),
            target: Some(TargetId::new()),
            snapshot: needs_snapshot.then(SnapshotId::new),
            mode: None,
            site: None,
        }
    }

    fn requested(kind: JobKind) -> Event {
        JobRequested {
            kind,
            trigger: Trigger::Manual,
            policy: None,
            source: Some(SourceId::new()),
            target: Some(TargetId::new()),
            snapshot: Some(SnapshotId::new()),
            mode: None,
            site: None,
        }
        .into()
    }

    fn started(attempt: u32) -> Event {
        JobStarted { worker: "transport-1".into(), attempt }.into()
    }

    fn succeeded() -> Event {
        JobSucceeded { snapshot: Some(SnapshotId::new()), bytes_read: 10, bytes_added: 5, files: 2, duration_ms: 100 }
            .into()
    }

    fn history(status: JobStatus) -> Vec<Event> {
        let backup = requested(JobKind::Backup);
        match status {
            JobStatus::Missing => vec![],
            JobStatus::Requested => vec![backup],
            JobStatus::Running => vec![backup, started(1)],
            JobStatus::Succeeded => vec![backup, started(1), succeeded()],
            JobStatus::Failed => vec![
                backup,
                started(1),
                JobFailed { error: "disk full".into(), attempts: 1, dead_lettered: false }.into(),
            ],
            JobStatus::Cancelled => vec![backup, JobCancelled { reason: None }.into()],
        }
    }

    fn over_quota() -> TenantFacts {
        TenantFacts { status: TenantStatus::Active, quota_bytes: Some(100), used_bytes: 100 }
    }

    /// One command of each kind, valid in the state that allows it.
    fn commands() -> Vec<JobCommand> {
        vec![
            request(JobKind::Backup),
            JobCommand::Start { worker: "transport-2".into(), attempt: 2 },
            JobCommand::Checkpoint { bytes_done: 1, files_done: 1, packs_uploaded: 1 },
            JobCommand::Succeed {
                snapshot: Some(SnapshotId::new()),
                bytes_read: 1,
                bytes_added: 1,
                files: 1,
                duration_ms: 1,
            },
            JobCommand::Fail { error: "worker died".into(), attempts: 3, dead_lettered: true },
            JobCommand::Cancel { reason: Some("not needed".into()) },
        ]
    }

    #[test]
    fn the_state_machine_allows_only_its_moves() {
        use JobStatus::*;
        // Where each command (in the order of `commands()`) leads from each state; `None` is refused.
        let table: [(JobStatus, [Option<JobStatus>; 6]); 6] = [
            (Missing, [Some(Requested), None, None, None, None, None]),
            (Requested, [None, Some(Running), None, None, Some(Failed), Some(Cancelled)]),
            (Running, [None, Some(Running), Some(Running), Some(Succeeded), Some(Failed), Some(Cancelled)]),
            (Succeeded, [None; 6]),
            (Failed, [None; 6]),
            (Cancelled, [None; 6]),
        ];
        assert_eq!(table.map(|(status, _)| status), JobStatus::ALL, "the table covers every state");
        for (from, outcomes) in table {
            for (command, outcome) in commands().into_iter().zip(outcomes) {
                let name = command.name();
                let test = AggregateTest::<Job>::given(history(from)).when(command);
                match outcome {
                    Some(to) => {
                        let state = test.then_expect_ok();
                        assert_eq!(state.status, to, "{name} from {from:?}");
                        assert_ne!(state, crate::replay(&history(from)), "{name} from {from:?} changed nothing");
                    }
                    None if from == Missing => {
                        test.then_expect_error(DomainError::NotFound { aggregate: AggregateType::Job })
                    }
                    None => test.then_expect_error(DomainError::illegal(from.as_str(), name)),
                }
            }
        }
    }

    #[test]
    fn start_while_running_needs_a_higher_attempt() {
        let running = || vec![requested(JobKind::Backup), started(2)];
        for attempt in [1, 2] {
            AggregateTest::<Job>::given(running())
                .when(JobCommand::Start { worker: "transport-2".into(), attempt })
                .then_expect_error(DomainError::illegal("running", "start"));
        }
        let state = AggregateTest::<Job>::given(running())
            .when(JobCommand::Start { worker: "transport-2".into(), attempt: 3 })
            .then_expect_events(vec![JobStarted { worker: "transport-2".into(), attempt: 3 }.into()]);
        assert_eq!(
            (state.status, state.attempt, state.worker.as_deref()),
            (JobStatus::Running, 3, Some("transport-2"))
        );
        AggregateTest::<Job>::given(vec![requested(JobKind::Backup)])
            .when(JobCommand::Start { worker: "transport-1".into(), attempt: 0 })
            .then_expect_invalid("attempt");
        AggregateTest::<Job>::given(vec![requested(JobKind::Backup)])
            .when(JobCommand::Start { worker: "".into(), attempt: 1 })
            .then_expect_invalid("worker");
    }

    #[test]
    fn a_requested_job_can_be_dead_lettered_before_it_starts() {
        let state = AggregateTest::<Job>::given(vec![requested(JobKind::Verify)])
            .when(JobCommand::Fail { error: "no worker took it".into(), attempts: 5, dead_lettered: true })
            .then_expect_events(vec![
                JobFailed { error: "no worker took it".into(), attempts: 5, dead_lettered: true }.into(),
            ]);
        assert_eq!((state.status, state.dead_lettered), (JobStatus::Failed, true));
    }

    #[test]
    fn checkpoints_record_progress_and_repeat_harmlessly() {
        let running = vec![requested(JobKind::Backup), started(1)];
        let state = AggregateTest::<Job>::given(running.clone())
            .when(JobCommand::Checkpoint { bytes_done: 100, files_done: 3, packs_uploaded: 1 })
            .then_expect_events(vec![JobCheckpointed { bytes_done: 100, files_done: 3, packs_uploaded: 1 }.into()]);
        assert_eq!(state.progress, JobProgress { bytes_done: 100, files_done: 3, packs_uploaded: 1 });
        let mut checkpointed = running;
        checkpointed.push(JobCheckpointed { bytes_done: 100, files_done: 3, packs_uploaded: 1 }.into());
        AggregateTest::<Job>::given(checkpointed)
            .when(JobCommand::Checkpoint { bytes_done: 100, files_done: 3, packs_uploaded: 1 })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_backup_succeeds_with_its_snapshot() {
        let running = || vec![requested(JobKind::Backup), started(1)];
        AggregateTest::<Job>::given(running())
            .when(JobCommand::Succeed { snapshot: None, bytes_read: 0, bytes_added: 0, files: 0, duration_ms: 0 })
            .then_expect_invalid("snapshot");
        AggregateTest::<Job>::given(vec![requested(JobKind::Verify), started(1)])
            .when(JobCommand::Succeed { snapshot: None, bytes_read: 9, bytes_added: 0, files: 0, duration_ms: 5 })
            .then_expect_events(vec![
                JobSucceeded { snapshot: None, bytes_read: 9, bytes_added: 0, files: 0, duration_ms: 5 }.into(),
            ]);
    }

    #[test]
    fn an_over_quota_tenant_cannot_start_work_that_adds_data() {
        for kind in JobKind::ALL {
            let test = AggregateTest::<Job>::given(vec![]).with_tenant(over_quota()).when(request(kind));
            if kind.adds_data() {
                test.then_expect_error(DomainError::QuotaExceeded { used: 100, quota: 100 });
            } else {
                assert_eq!(test.then_expect_ok().status, JobStatus::Requested, "{kind:?}");
            }
        }
        let under_quota = TenantFacts { used_bytes: 99, ..over_quota() };
        AggregateTest::<Job>::given(vec![]).with_tenant(under_quota).when(request(JobKind::Backup)).then_expect_ok();
    }

    #[test]
    fn an_over_quota_tenant_can_still_finish_running_work() {
        AggregateTest::<Job>::given(vec![requested(JobKind::Backup), started(1)])
            .with_tenant(over_quota())
            .when(JobCommand::Succeed {
                snapshot: Some(SnapshotId::new()),
                bytes_read: 1,
                bytes_added: 1,
                files: 1,
                duration_ms: 1,
            })
            .then_expect_ok();
    }

    #[test]
    fn a_suspended_tenant_cannot_request_but_running_work_goes_on() {
        let suspended = TenantFacts { status: TenantStatus::Suspended, quota_bytes: None, used_bytes: 0 };
        for kind in JobKind::ALL {
            AggregateTest::<Job>::given(vec![])
                .with_tenant(suspended.clone())
                .when(request(kind))
                .then_expect_error(DomainError::TenantSuspended);
        }
        AggregateTest::<Job>::given(vec![requested(JobKind::Backup)])
            .with_tenant(suspended.clone())
            .when(JobCommand::Start { worker: "transport-1".into(), attempt: 1 })
            .then_expect_ok();
        AggregateTest::<Job>::given(vec![requested(JobKind::Backup), started(1)])
            .with_tenant(suspended)
            .when(JobCommand::Fail { error: "tenant suspended".into(), attempts: 1, dead_lettered: false })
            .then_expect_ok();
    }

    #[test]
    fn requests_name_what_the_kind_needs() {
        let with = |kind: JobKind, change: &dyn Fn(&mut JobRequested)| {
            let Event::JobRequested(mut e) = requested(kind) else { unreachable!() };
            e.mode = None;
            change(&mut e);
            JobCommand::Request {
                kind: e.kind,
                trigger: e.trigger,
                policy: e.policy,
                source: e.source,
                target: e.target,
                snapshot: e.snapshot,
                mode: e.mode,
                site: e.site,
            }
        };
        let cases: Vec<(&str, JobCommand)> = vec![
            ("source", with(JobKind::Backup, &|e| e.source = None)),
            ("target", with(JobKind::Backup, &|e| e.target = None)),
            ("target", with(JobKind::Copy, &|e| e.target = None)),
            ("snapshot", with(JobKind::Copy, &|e| e.snapshot = None)),
            ("snapshot", with(JobKind::Restore, &|e| e.snapshot = None)),
            ("target", with(JobKind::Prune, &|e| e.target = None)),
            ("target", with(JobKind::Verify, &|e| (e.target, e.snapshot) = (None, None))),
            ("mode", with(JobKind::Verify, &|e| e.mode = Some(BackupMode::Full))),
            ("policy", with(JobKind::Backup, &|e| e.trigger = Trigger::Schedule { at: T0 })),
            ("site", with(JobKind::Backup, &|e| e.site = Some("berlin.dc".into()))),
        ];
        for (field, command) in cases {
            AggregateTest::<Job>::given(vec![]).when(command).then_expect_invalid(field);
        }
        let scheduled = with(JobKind::Backup, &|e| {
            e.trigger = Trigger::Schedule { at: T0 };
            e.policy = Some(PolicyId::new());
            e.mode = Some(BackupMode::Full);
            e.site = Some("berlin-dc".into());
        });
        AggregateTest::<Job>::given(vec![]).when(scheduled).then_expect_ok();
        let follow_up = with(JobKind::Forget, &|e| e.trigger = Trigger::FollowUp { after: JobId::new() });
        AggregateTest::<Job>::given(vec![]).when(follow_up).then_expect_ok();
    }
}
