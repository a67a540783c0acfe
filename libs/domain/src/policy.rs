//! A policy: back up one source to one target on a schedule, keep snapshots by a retention
//! policy, copy them to more targets, and verify them on a schedule of their own.
//!
//! Source and target are fixed when it is created; everything else can be updated. Paused
//! policies keep their settings and do not fire.

use arca_events::{
    AggregateType, BackupMode, Event, Misfire, PolicyCreated, PolicyDeleted, PolicyPaused, PolicyResumed,
    PolicyUpdated, Retention, Schedule, SourceId, TargetId,
};

use crate::{Aggregate, Context, DomainError, schedule, validate};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyStatus {
    #[default]
    Missing,
    Active,
    Paused,
    Deleted,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub status: PolicyStatus,
    pub name: String,
    pub source: SourceId,
    pub target: TargetId,
    /// `None` until created.
    pub schedule: Option<Schedule>,
    pub misfire: Misfire,
    pub mode: BackupMode,
    pub retention: Retention,
    pub copy_targets: Vec<TargetId>,
    pub verify_schedule: Option<Schedule>,
}

impl Policy {
    /// True when the scheduler should fire it.
    pub fn is_active(&self) -> bool {
        self.status == PolicyStatus::Active
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyCommand {
    Create {
        name: String,
        source: SourceId,
        target: TargetId,
        schedule: Schedule,
        misfire: Misfire,
        mode: BackupMode,
        retention: Retention,
        copy_targets: Vec<TargetId>,
        verify_schedule: Option<Schedule>,
    },
    /// Replaces everything but the source and target.
    Update {
        name: String,
        schedule: Schedule,
        misfire: Misfire,
        mode: BackupMode,
        retention: Retention,
        copy_targets: Vec<TargetId>,
        verify_schedule: Option<Schedule>,
    },
    Pause,
    Resume,
    Delete,
}

impl Aggregate for Policy {
    const TYPE: AggregateType = AggregateType::Policy;
    type Command = PolicyCommand;

    fn handle(&self, command: &PolicyCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        match (self.status, command) {
            (PolicyStatus::Deleted, _) => return Err(DomainError::Removed { aggregate: AggregateType::Policy }),
            (PolicyStatus::Missing, PolicyCommand::Create { .. }) => {}
            (PolicyStatus::Missing, _) => return Err(DomainError::NotFound { aggregate: AggregateType::Policy }),
            (_, PolicyCommand::Create { .. }) => {
                return Err(DomainError::AlreadyExists { aggregate: AggregateType::Policy });
            }
            _ => {}
        }
        let event: Event = match command {
            PolicyCommand::Create {
                name,
                source,
                target,
                schedule,
                misfire,
                mode,
                retention,
                copy_targets,
                verify_schedule,
            } => {
                let name = validate::name("name", name)?;
                check_settings(*target, schedule, retention, copy_targets, verify_schedule)?;
                PolicyCreated {
                    name,
                    source: *source,
                    target: *target,
                    schedule: schedule.clone(),
                    misfire: *misfire,
                    mode: *mode,
                    retention: *retention,
                    copy_targets: copy_targets.clone(),
                    verify_schedule: verify_schedule.clone(),
                }
                .into()
            }
            PolicyCommand::Update { name, schedule, misfire, mode, retention, copy_targets, verify_schedule } => {
                let name = validate::name("name", name)?;
                check_settings(self.target, schedule, retention, copy_targets, verify_schedule)?;
                let updated = PolicyUpdated {
                    name,
                    schedule: schedule.clone(),
                    misfire: *misfire,
                    mode: *mode,
                    retention: *retention,
                    copy_targets: copy_targets.clone(),
                    verify_schedule: verify_schedule.clone(),
                };
                if self.unchanged_by(&updated) {
                    return Ok(vec![]);
                }
                updated.into()
            }
            PolicyCommand::Pause if self.status == PolicyStatus::Paused => return Ok(vec![]),
            PolicyCommand::Pause => PolicyPaused {}.into(),
            PolicyCommand::Resume if self.status == PolicyStatus::Active => return Ok(vec![]),
            PolicyCommand::Resume => PolicyResumed {}.into(),
            PolicyCommand::Delete => PolicyDeleted {}.into(),
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::PolicyCreated(e) => {
                self.status = PolicyStatus::Active;
                self.name.clone_from(&e.name);
                self.source = e.source;
                self.target = e.target;
                self.schedule = Some(e.schedule.clone());
                self.misfire = e.misfire;
                self.mode = e.mode;
                self.retention = e.retention;
                self.copy_targets.clone_from(&e.copy_targets);
                self.verify_schedule.clone_from(&e.verify_schedule);
            }
            Event::PolicyUpdated(e) => {
                self.name.clone_from(&e.name);
                self.schedule = Some(e.schedule.clone());
                self.misfire = e.misfire;
                self.mode = e.mode;
                self.retention = e.retention;
                self.copy_targets.clone_from(&e.copy_targets);
                self.verify_schedule.clone_from(&e.verify_schedule);
            }
            Event::PolicyPaused(_) => self.status = PolicyStatus::Paused,
            Event::PolicyResumed(_) => self.status = PolicyStatus::Active,
            Event::PolicyDeleted(_) => self.status = PolicyStatus::Deleted,
            _ => {}
        }
    }
}

impl Policy {
    fn unchanged_by(&self, update: &PolicyUpdated) -> bool {
        self.name == update.name
            && self.schedule.as_ref() == Some(&update.schedule)
            && self.misfire == update.misfire
            && self.mode == update.mode
            && self.retention == update.retention
            && self.copy_targets == update.copy_targets
            && self.verify_schedule == update.verify_schedule
    }
}

fn check_settings(
    target: TargetId,
    schedule: &Schedule,
    retention: &Retention,
    copy_targets: &[TargetId],
    verify_schedule: &Option<Schedule>,
) -> Result<(), DomainError> {
    schedule::check(schedule).map_err(|e| DomainError::invalid("schedule", e.to_string()))?;
    if let Some(verify_schedule) = verify_schedule {
        schedule::check(verify_schedule).map_err(|e| DomainError::invalid("verify_schedule", e.to_string()))?;
    }
    validate::retention("retention", retention)?;
    for (i, copy_target) in copy_targets.iter().enumerate() {
        if *copy_target == target {
            return Err(DomainError::invalid("copy_targets", format!("{copy_target} is the policy's own target")));
        }
        if copy_targets[..i].contains(copy_target) {
            return Err(DomainError::invalid("copy_targets", format!("{copy_target} is given twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::AggregateTest;

    /// Everything of a policy that can change after it is created.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct PolicySettings {
        name: String,
        schedule: Schedule,
        misfire: Misfire,
        mode: BackupMode,
        retention: Retention,
        copy_targets: Vec<TargetId>,
        verify_schedule: Option<Schedule>,
    }

    fn daily() -> Schedule {
        Schedule::Cron { expression: "0 2 * * *".into(), timezone: "Europe/Berlin".into() }
    }

    struct Ids {
        source: SourceId,
        target: TargetId,
    }

    fn ids() -> Ids {
        Ids { source: SourceId::new(), target: TargetId::new() }
    }

    fn create(ids: &Ids, settings: PolicySettings) -> PolicyCommand {
        PolicyCommand::Create {
            name: settings.name,
            source: ids.source,
            target: ids.target,
            schedule: settings.schedule,
            misfire: settings.misfire,
            mode: settings.mode,
            retention: settings.retention,
            copy_targets: settings.copy_targets,
            verify_schedule: settings.verify_schedule,
        }
    }

    fn update(settings: PolicySettings) -> PolicyCommand {
        PolicyCommand::Update {
            name: settings.name,
            schedule: settings.schedule,
            misfire: settings.misfire,
            mode: settings.mode,
            retention: settings.retention,
            copy_targets: settings.copy_targets,
            verify_schedule: settings.verify_schedule,
        }
    }

    fn settings() -> PolicySettings {
        PolicySettings {
            name: "nightly".into(),
            schedule: daily(),
            misfire: Misfire::RunOnce,
            mode: BackupMode::Incremental,
            retention: Retention { keep_daily: Some(7), keep_weekly: Some(4), ..Default::default() },
            copy_targets: vec![],
            verify_schedule: Some(Schedule::Interval { seconds: 7 * 24 * 3600 }),
        }
    }

    fn created(ids: &Ids) -> Event {
        let s = settings();
        PolicyCreated {
            name: s.name,
            source: ids.source,
            target: ids.target,
            schedule: s.schedule,
            misfire: s.misfire,
            mode: s.mode,
            retention: s.retention,
            copy_targets: s.copy_targets,
            verify_schedule: s.verify_schedule,
        }
        .into()
    }

    #[test]
    fn create_a_policy() {
        let ids = ids();
        let state = AggregateTest::<Policy>::given(vec![])
            .when(create(&ids, settings()))
            .then_expect_events(vec![created(&ids)]);
        assert!(state.is_active());
        assert_eq!((state.source, state.target, state.schedule), (ids.source, ids.target, Some(daily())));
    }

    #[test]
    fn schedules_are_checked() {
        let ids = ids();
        for schedule in [
            Schedule::Cron { expression: "0 2 * *".into(), timezone: "UTC".into() },
            Schedule::Cron { expression: "0 2 * * * * *".into(), timezone: "UTC".into() },
            Schedule::Cron { expression: "0 24 * * *".into(), timezone: "UTC".into() },
            Schedule::Cron { expression: "0 2 * * *".into(), timezone: "Mars/Olympus".into() },
            Schedule::Interval { seconds: 59 },
            Schedule::Interval { seconds: 0 },
        ] {
            AggregateTest::<Policy>::given(vec![])
                .when(create(&ids, PolicySettings { schedule: schedule.clone(), ..settings() }))
                .then_expect_invalid("schedule");
            AggregateTest::<Policy>::given(vec![])
                .when(create(&ids, PolicySettings { verify_schedule: Some(schedule.clone()), ..settings() }))
                .then_expect_invalid("verify_schedule");
            AggregateTest::<Policy>::given(vec![created(&ids)])
                .when(update(PolicySettings { schedule, ..settings() }))
                .then_expect_invalid("schedule");
        }
        for schedule in [
            Schedule::Interval { seconds: 60 },
            Schedule::Cron { expression: "0 30 2 * * *".into(), timezone: "UTC".into() },
        ] {
            AggregateTest::<Policy>::given(vec![])
                .when(create(&ids, PolicySettings { schedule, ..settings() }))
                .then_expect_ok();
        }
    }

    #[test]
    fn retention_rules_keep_at_least_one_snapshot() {
        let ids = ids();
        let zero_rules = [
            Retention { keep_last: Some(0), ..Default::default() },
            Retention { keep_hourly: Some(0), ..Default::default() },
            Retention { keep_daily: Some(0), ..Default::default() },
            Retention { keep_weekly: Some(0), keep_daily: Some(3), ..Default::default() },
            Retention { keep_monthly: Some(0), ..Default::default() },
            Retention { keep_yearly: Some(0), ..Default::default() },
        ];
        for retention in zero_rules {
            AggregateTest::<Policy>::given(vec![])
                .when(create(&ids, PolicySettings { retention, ..settings() }))
                .then_expect_invalid("retention");
            AggregateTest::<Policy>::given(vec![created(&ids)])
                .when(update(PolicySettings { retention, ..settings() }))
                .then_expect_invalid("retention");
        }
        for retention in [Retention::default(), Retention { keep_last: Some(1), ..Default::default() }] {
            AggregateTest::<Policy>::given(vec![])
                .when(create(&ids, PolicySettings { retention, ..settings() }))
                .then_expect_ok();
        }
    }

    #[test]
    fn copy_targets_are_other_targets_once_each() {
        let ids = ids();
        let other = TargetId::new();
        for copy_targets in [vec![ids.target], vec![other, other], vec![other, ids.target]] {
            AggregateTest::<Policy>::given(vec![])
                .when(create(&ids, PolicySettings { copy_targets: copy_targets.clone(), ..settings() }))
                .then_expect_invalid("copy_targets");
            AggregateTest::<Policy>::given(vec![created(&ids)])
                .when(update(PolicySettings { copy_targets, ..settings() }))
                .then_expect_invalid("copy_targets");
        }
        let state = AggregateTest::<Policy>::given(vec![created(&ids)])
            .when(update(PolicySettings { copy_targets: vec![other], ..settings() }))
            .then_expect_events(vec![
                PolicyUpdated {
                    name: "nightly".into(),
                    schedule: daily(),
                    misfire: Misfire::RunOnce,
                    mode: BackupMode::Incremental,
                    retention: settings().retention,
                    copy_targets: vec![other],
                    verify_schedule: settings().verify_schedule,
                }
                .into(),
            ]);
        assert_eq!(state.copy_targets, [other]);
    }

    #[test]
    fn update_that_changes_nothing_produces_nothing() {
        let ids = ids();
        AggregateTest::<Policy>::given(vec![created(&ids)])
            .when(update(PolicySettings { name: " nightly ".into(), ..settings() }))
            .then_expect_events(vec![]);
    }

    #[test]
    fn pause_and_resume() {
        let ids = ids();
        let state = AggregateTest::<Policy>::given(vec![created(&ids)])
            .when(PolicyCommand::Pause)
            .then_expect_events(vec![PolicyPaused {}.into()]);
        assert_eq!(state.status, PolicyStatus::Paused);
        let paused = || vec![created(&ids), PolicyPaused {}.into()];
        AggregateTest::<Policy>::given(paused()).when(PolicyCommand::Pause).then_expect_events(vec![]);
        AggregateTest::<Policy>::given(vec![created(&ids)]).when(PolicyCommand::Resume).then_expect_events(vec![]);
        let state = AggregateTest::<Policy>::given(paused())
            .when(update(PolicySettings { name: "weekly".into(), ..settings() }))
            .then_expect_events(vec![
                PolicyUpdated {
                    name: "weekly".into(),
                    schedule: daily(),
                    misfire: Misfire::RunOnce,
                    mode: BackupMode::Incremental,
                    retention: settings().retention,
                    copy_targets: vec![],
                    verify_schedule: settings().verify_schedule,
                }
                .into(),
            ]);
        assert_eq!(state.status, PolicyStatus::Paused, "an update does not resume");
        AggregateTest::<Policy>::given(paused())
            .when(PolicyCommand::Resume)
            .then_expect_events(vec![PolicyResumed {}.into()]);
    }

    #[test]
    fn missing_existing_and_deleted_policies() {
        let ids = ids();
        for command in [update(settings()), PolicyCommand::Pause, PolicyCommand::Resume, PolicyCommand::Delete] {
            AggregateTest::<Policy>::given(vec![])
                .when(command)
                .then_expect_error(DomainError::NotFound { aggregate: AggregateType::Policy });
        }
        AggregateTest::<Policy>::given(vec![created(&ids)])
            .when(create(&ids, settings()))
            .then_expect_error(DomainError::AlreadyExists { aggregate: AggregateType::Policy });
        for command in [
            create(&ids, settings()),
            update(settings()),
            PolicyCommand::Pause,
            PolicyCommand::Resume,
            PolicyCommand::Delete,
        ] {
            AggregateTest::<Policy>::given(vec![created(&ids), PolicyDeleted {}.into()])
                .when(command)
                .then_expect_error(DomainError::Removed { aggregate: AggregateType::Policy });
        }
    }
}
