//! A replica: a near-real-time copy of a source kept as a series of recovery points, with a
//! recovery point objective (RPO) it is measured against.
//!
//! A replica kept in a folder can be failed over in place (its recovery point becomes the live
//! data) and failed back. While failed over it records no points, so the point in use is never
//! rotated out, and it cannot be deleted.

use std::collections::VecDeque;

use arca_events::{
    AggregateType, Event, ReplicaCreated, ReplicaDeleted, ReplicaDestination, ReplicaFailedBack, ReplicaFailedOver,
    ReplicaLagExceeded, ReplicaPointRecorded, SourceId,
};
use chrono::{DateTime, Utc};

use crate::{Aggregate, Context, DomainError, Lifecycle, validate};

/// One recovery point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPoint {
    pub point: String,
    pub at: DateTime<Utc>,
    pub lag_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replica {
    pub status: Lifecycle,
    pub name: String,
    pub source: SourceId,
    /// `None` until created.
    pub destination: Option<ReplicaDestination>,
    pub rpo_seconds: u64,
    pub keep_points: u32,
    /// The newest `keep_points` points, oldest first.
    pub points: VecDeque<ReplicaPoint>,
    /// The point it is failed over to, while it is.
    pub failed_over_to: Option<String>,
    /// How many times it was failed back: each time a new job follows the source.
    pub failbacks: u32,
    /// Its lag went over the RPO (an alert was raised) and no point in time has been within
    /// the RPO since: one alert per episode.
    pub lagging: bool,
}

impl Replica {
    /// The newest recovery point.
    pub fn latest_point(&self) -> Option<&ReplicaPoint> {
        self.points.back()
    }

    pub fn is_failed_over(&self) -> bool {
        self.failed_over_to.is_some()
    }

    /// The alert for a lag over the RPO, unless one was raised for this episode already.
    fn lag_alert(&self, lag_ms: u64) -> Option<Event> {
        (lag_ms > self.rpo_seconds.saturating_mul(1000) && !self.lagging)
            .then(|| ReplicaLagExceeded { lag_ms, rpo_seconds: self.rpo_seconds }.into())
    }

    fn state_name(&self) -> &'static str {
        if self.is_failed_over() { "failed over" } else { "replicating" }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaCommand {
    Create {
        name: String,
        source: SourceId,
        destination: ReplicaDestination,
        rpo_seconds: u64,
        keep_points: u32,
    },
    RecordPoint {
        point: String,
        at: DateTime<Utc>,
        lag_ms: u64,
    },
    /// The follower's lag right now, reported while it is over the RPO (a pass taking longer
    /// than the RPO allows records no point until it ends).
    ReportLag {
        lag_ms: u64,
    },
    FailOver {
        point: String,
    },
    FailBack,
    Delete,
}

impl ReplicaCommand {
    fn name(&self) -> &'static str {
        match self {
            ReplicaCommand::Create { .. } => "create",
            ReplicaCommand::RecordPoint { .. } => "record a point",
            ReplicaCommand::ReportLag { .. } => "report its lag",
            ReplicaCommand::FailOver { .. } => "fail over",
            ReplicaCommand::FailBack => "fail back",
            ReplicaCommand::Delete => "delete",
        }
    }
}

impl Aggregate for Replica {
    const TYPE: AggregateType = AggregateType::Replica;
    type Command = ReplicaCommand;

    fn handle(&self, command: &ReplicaCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        match command {
            ReplicaCommand::Create { .. } => self.status.require_missing(AggregateType::Replica)?,
            _ => self.status.require_active(AggregateType::Replica)?,
        }
        let illegal = || Err(DomainError::illegal(self.state_name(), command.name()));
        match command {
            ReplicaCommand::Create { name, source, destination, rpo_seconds, keep_points } => {
                let name = validate::name("name", name)?;
                if let ReplicaDestination::Directory { path } = destination {
                    validate::absolute_path("destination", path)?;
                }
                if *rpo_seconds == 0 {
                    return Err(DomainError::invalid("rpo_seconds", "must be at least 1"));
                }
                if *keep_points == 0 {
                    return Err(DomainError::invalid("keep_points", "must be at least 1"));
                }
                let created = ReplicaCreated {
                    name,
                    source: *source,
                    destination: destination.clone(),
                    rpo_seconds: *rpo_seconds,
                    keep_points: *keep_points,
                };
                Ok(vec![created.into()])
            }
            ReplicaCommand::RecordPoint { .. } | ReplicaCommand::Delete if self.is_failed_over() => illegal(),
            ReplicaCommand::RecordPoint { point, at, lag_ms } => {
                validate::not_blank("point", point)?;
                if self.points.iter().any(|kept| kept.point == *point) {
                    return Ok(vec![]);
                }
                let mut events = vec![ReplicaPointRecorded { point: point.clone(), at: *at, lag_ms: *lag_ms }.into()];
                events.extend(self.lag_alert(*lag_ms));
                Ok(events)
            }
            // A follower still finishing its pass while a failover begins: nothing to alert.
            ReplicaCommand::ReportLag { .. } if self.is_failed_over() => Ok(vec![]),
            ReplicaCommand::ReportLag { lag_ms } => Ok(self.lag_alert(*lag_ms).into_iter().collect()),
            ReplicaCommand::FailOver { .. } if self.is_failed_over() => illegal(),
            ReplicaCommand::FailOver { point } => {
                if !matches!(self.destination, Some(ReplicaDestination::Directory { .. })) {
                    return Err(DomainError::invalid(
                        "destination",
                        "only a replica kept in a folder can be failed over in place",
                    ));
                }
                if !self.points.iter().any(|kept| kept.point == *point) {
                    return Err(DomainError::invalid("point", format!("`{point}` is not a kept recovery point")));
                }
                Ok(vec![ReplicaFailedOver { point: point.clone() }.into()])
            }
            ReplicaCommand::FailBack if !self.is_failed_over() => illegal(),
            ReplicaCommand::FailBack => Ok(vec![ReplicaFailedBack {}.into()]),
            ReplicaCommand::Delete => Ok(vec![ReplicaDeleted {}.into()]),
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::ReplicaCreated(e) => {
                self.status = Lifecycle::Active;
                self.name.clone_from(&e.name);
                self.source = e.source;
                self.destination = Some(e.destination.clone());
                self.rpo_seconds = e.rpo_seconds;
                self.keep_points = e.keep_points;
            }
            Event::ReplicaLagExceeded(_) => self.lagging = true,
            Event::ReplicaPointRecorded(e) => {
                if e.lag_ms <= self.rpo_seconds.saturating_mul(1000) {
                    self.lagging = false;
                }
                self.points.push_back(ReplicaPoint { point: e.point.clone(), at: e.at, lag_ms: e.lag_ms });
                let keep = usize::try_from(self.keep_points).unwrap_or(usize::MAX);
                while self.points.len() > keep {
                    self.points.pop_front();
                }
            }
            Event::ReplicaFailedOver(e) => self.failed_over_to = Some(e.point.clone()),
            Event::ReplicaFailedBack(_) => {
                self.failed_over_to = None;
                self.failbacks += 1;
            }
            Event::ReplicaDeleted(_) => self.status = Lifecycle::Removed,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use arca_events::TargetId;
    use chrono::TimeDelta;

    use super::*;
    use crate::testing::{AggregateTest, T0};

    fn created(destination: ReplicaDestination) -> Event {
        ReplicaCreated {
            name: "db standby".into(),
            source: SourceId::new(),
            destination,
            rpo_seconds: 60,
            keep_points: 2,
        }
        .into()
    }

    fn in_folder() -> Event {
        created(ReplicaDestination::Directory { path: "/srv/standby".into() })
    }

    fn recorded(point: &str) -> Event {
        ReplicaPointRecorded { point: point.into(), at: T0, lag_ms: 10 }.into()
    }

    fn create(destination: ReplicaDestination, rpo_seconds: u64, keep_points: u32) -> ReplicaCommand {
        ReplicaCommand::Create {
            name: "db standby".into(),
            source: SourceId::new(),
            destination,
            rpo_seconds,
            keep_points,
        }
    }

    #[test]
    fn create_checks_its_values() {
        let folder = || ReplicaDestination::Directory { path: "/srv/standby".into() };
        AggregateTest::<Replica>::given(vec![]).when(create(folder(), 60, 3)).then_expect_ok();
        AggregateTest::<Replica>::given(vec![])
            .when(create(ReplicaDestination::Target { target: TargetId::new() }, 1, 1))
            .then_expect_ok();
        AggregateTest::<Replica>::given(vec![]).when(create(folder(), 0, 3)).then_expect_invalid("rpo_seconds");
        AggregateTest::<Replica>::given(vec![]).when(create(folder(), 60, 0)).then_expect_invalid("keep_points");
        for path in ["srv/standby", "/srv/../etc"] {
            AggregateTest::<Replica>::given(vec![])
                .when(create(ReplicaDestination::Directory { path: path.into() }, 60, 3))
                .then_expect_invalid("destination");
        }
        AggregateTest::<Replica>::given(vec![in_folder()])
            .when(create(folder(), 60, 3))
            .then_expect_error(DomainError::AlreadyExists { aggregate: AggregateType::Replica });
    }

    #[test]
    fn points_within_the_rpo_raise_nothing_else() {
        let state = AggregateTest::<Replica>::given(vec![in_folder()])
            .when(ReplicaCommand::RecordPoint { point: "p1".into(), at: T0, lag_ms: 60_000 })
            .then_expect_events(vec![ReplicaPointRecorded { point: "p1".into(), at: T0, lag_ms: 60_000 }.into()]);
        assert_eq!(state.latest_point().map(|p| p.point.as_str()), Some("p1"));
    }

    #[test]
    fn lag_beyond_the_rpo_is_raised() {
        AggregateTest::<Replica>::given(vec![in_folder()])
            .when(ReplicaCommand::RecordPoint { point: "p1".into(), at: T0, lag_ms: 60_001 })
            .then_expect_events(vec![
                ReplicaPointRecorded { point: "p1".into(), at: T0, lag_ms: 60_001 }.into(),
                ReplicaLagExceeded { lag_ms: 60_001, rpo_seconds: 60 }.into(),
            ]);
    }

    #[test]
    fn a_lag_over_the_rpo_alerts_once_until_a_point_is_within_it_again() {
        let exceeded = |lag_ms| -> Event { ReplicaLagExceeded { lag_ms, rpo_seconds: 60 }.into() };
        AggregateTest::<Replica>::given(vec![in_folder()])
            .when(ReplicaCommand::ReportLag { lag_ms: 60_000 })
            .then_expect_events(vec![]);
        AggregateTest::<Replica>::given(vec![in_folder()])
            .when(ReplicaCommand::ReportLag { lag_ms: 61_000 })
            .then_expect_events(vec![exceeded(61_000)]);
        AggregateTest::<Replica>::given(vec![in_folder(), exceeded(61_000)])
            .when(ReplicaCommand::ReportLag { lag_ms: 90_000 })
            .then_expect_events(vec![]);
        AggregateTest::<Replica>::given(vec![in_folder(), exceeded(61_000)])
            .when(ReplicaCommand::RecordPoint { point: "p1".into(), at: T0, lag_ms: 95_000 })
            .then_expect_events(vec![ReplicaPointRecorded { point: "p1".into(), at: T0, lag_ms: 95_000 }.into()]);
        AggregateTest::<Replica>::given(vec![in_folder(), exceeded(61_000), recorded("p1")])
            .when(ReplicaCommand::ReportLag { lag_ms: 61_000 })
            .then_expect_events(vec![exceeded(61_000)]);
        AggregateTest::<Replica>::given(vec![
            in_folder(),
            recorded("p1"),
            ReplicaFailedOver { point: "p1".into() }.into(),
        ])
        .when(ReplicaCommand::ReportLag { lag_ms: 61_000 })
        .then_expect_events(vec![]);
    }

    #[test]
    fn only_the_newest_points_are_kept_and_repeats_are_harmless() {
        let state = AggregateTest::<Replica>::given(vec![in_folder(), recorded("p1"), recorded("p2")])
            .when(ReplicaCommand::RecordPoint { point: "p3".into(), at: T0 + TimeDelta::minutes(1), lag_ms: 5 })
            .then_expect_ok();
        assert_eq!(state.points.iter().map(|p| p.point.as_str()).collect::<Vec<_>>(), ["p2", "p3"]);
        AggregateTest::<Replica>::given(vec![in_folder(), recorded("p1")])
            .when(ReplicaCommand::RecordPoint { point: "p1".into(), at: T0, lag_ms: 10 })
            .then_expect_events(vec![]);
        AggregateTest::<Replica>::given(vec![in_folder()])
            .when(ReplicaCommand::RecordPoint { point: " ".into(), at: T0, lag_ms: 10 })
            .then_expect_invalid("point");
    }

    #[test]
    fn fail_over_to_a_kept_point_and_back() {
        let given = || vec![in_folder(), recorded("p1"), recorded("p2"), recorded("p3")];
        AggregateTest::<Replica>::given(given())
            .when(ReplicaCommand::FailOver { point: "p1".into() })
            .then_expect_invalid("point");
        let state = AggregateTest::<Replica>::given(given())
            .when(ReplicaCommand::FailOver { point: "p2".into() })
            .then_expect_events(vec![ReplicaFailedOver { point: "p2".into() }.into()]);
        assert_eq!(state.failed_over_to.as_deref(), Some("p2"));

        let mut failed_over = given();
        failed_over.push(ReplicaFailedOver { point: "p2".into() }.into());
        for command in [
            ReplicaCommand::FailOver { point: "p3".into() },
            ReplicaCommand::RecordPoint { point: "p4".into(), at: T0, lag_ms: 1 },
            ReplicaCommand::Delete,
        ] {
            let name = command.name();
            AggregateTest::<Replica>::given(failed_over.clone())
                .when(command)
                .then_expect_error(DomainError::illegal("failed over", name));
        }
        let state = AggregateTest::<Replica>::given(failed_over)
            .when(ReplicaCommand::FailBack)
            .then_expect_events(vec![ReplicaFailedBack {}.into()]);
        assert!(!state.is_failed_over());
    }

    #[test]
    fn fail_back_only_when_failed_over() {
        AggregateTest::<Replica>::given(vec![in_folder(), recorded("p1")])
            .when(ReplicaCommand::FailBack)
            .then_expect_error(DomainError::illegal("replicating", "fail back"));
    }

    #[test]
    fn only_folder_replicas_fail_over() {
        AggregateTest::<Replica>::given(vec![
            created(ReplicaDestination::Target { target: TargetId::new() }),
            recorded("p1"),
        ])
        .when(ReplicaCommand::FailOver { point: "p1".into() })
        .then_expect_invalid("destination");
    }

    #[test]
    fn missing_and_deleted_replicas_accept_nothing() {
        let commands = || {
            vec![
                ReplicaCommand::RecordPoint { point: "p".into(), at: T0, lag_ms: 1 },
                ReplicaCommand::FailOver { point: "p".into() },
                ReplicaCommand::FailBack,
                ReplicaCommand::Delete,
            ]
        };
        for command in commands() {
            AggregateTest::<Replica>::given(vec![])
                .when(command)
                .then_expect_error(DomainError::NotFound { aggregate: AggregateType::Replica });
        }
        let deleted = vec![in_folder(), ReplicaDeleted {}.into()];
        for command in commands().into_iter().chain([create(ReplicaDestination::Directory { path: "/x".into() }, 1, 1)])
        {
            AggregateTest::<Replica>::given(deleted.clone())
                .when(command)
                .then_expect_error(DomainError::Removed { aggregate: AggregateType::Replica });
        }
    }
}
