//! Given/when/then tests for aggregates, after cqrs-es' `TestFramework`.
//!
//! ```
//! use arca_domain::testing::AggregateTest;
//! use arca_domain::tenant::{Tenant, TenantCommand};
//! use arca_events::TenantCreated;
//!
//! AggregateTest::<Tenant>::given(vec![])
//!     .when(TenantCommand::Create { name: "acme".into(), quota_bytes: None })
//!     .then_expect_events(vec![TenantCreated { name: "acme".into(), quota_bytes: None }.into()]);
//! ```
//!
//! The context defaults to [`T0`] and an active tenant without a quota; [`AggregateTest::at`]
//! and [`AggregateTest::with_tenant`] change it. Failed expectations panic with the command,
//! the state and what came back.

use arca_events::Event;
use chrono::{DateTime, Utc};

use crate::{Aggregate, Context, DomainError, TenantFacts, replay};

/// The default time of a test decision: 2026-01-01T00:00:00Z.
pub const T0: DateTime<Utc> = DateTime::from_timestamp(1_767_225_600, 0).expect("a valid timestamp");

/// A test in the making: the history and the context of the decision.
pub struct AggregateTest<A: Aggregate> {
    state: A,
    ctx: Context,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate's history before the command.
    pub fn given(events: Vec<Event>) -> Self {
        Self { state: replay(&events), ctx: Context::new(T0, TenantFacts::active()) }
    }

    /// The time of the decision.
    pub fn at(mut self, now: DateTime<Utc>) -> Self {
        self.ctx.now = now;
        self
    }

    /// The facts about the owning tenant.
    pub fn with_tenant(mut self, facts: TenantFacts) -> Self {
        self.ctx.tenant = facts;
        self
    }

    /// Decides `command`.
    pub fn when(self, command: A::Command) -> AggregateTestResult<A> {
        let result = self.state.handle(&command, &self.ctx);
        AggregateTestResult { state: self.state, command, result }
    }
}

/// What a command decided, to check.
pub struct AggregateTestResult<A: Aggregate> {
    state: A,
    command: A::Command,
    result: Result<Vec<Event>, DomainError>,
}

impl<A: Aggregate> AggregateTestResult<A> {
    /// Expects exactly these events, and returns the state after applying them.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<Event>) -> A {
        let events = match self.result {
            Ok(events) => events,
            Err(error) => panic!("{:?} on {:?}: expected events, got error `{error}`", self.command, self.state),
        };
        assert_eq!(events, expected, "{:?} on {:?}", self.command, self.state);
        let mut state = self.state;
        for event in &events {
            assert_eq!(event.aggregate(), A::TYPE, "{} is not an event of a {:?}", event.event_type(), A::TYPE);
            state.apply(event);
        }
        state
    }

    /// Expects the command to be accepted, whatever it produced, and returns the state after
    /// applying its events.
    #[track_caller]
    pub fn then_expect_ok(self) -> A {
        match self.result {
            Ok(events) => {
                let mut state = self.state;
                for event in &events {
                    assert_eq!(event.aggregate(), A::TYPE, "{} is not an event of a {:?}", event.event_type(), A::TYPE);
                    state.apply(event);
                }
                state
            }
            Err(error) => panic!("{:?} on {:?}: expected success, got error `{error}`", self.command, self.state),
        }
    }

    /// Expects exactly this error.
    #[track_caller]
    pub fn then_expect_error(self, expected: DomainError) {
        match self.result {
            Err(error) => assert_eq!(error, expected, "{:?} on {:?}", self.command, self.state),
            Ok(events) => panic!("{:?} on {:?}: expected error `{expected}`, got {events:?}", self.command, self.state),
        }
    }

    /// Expects an error that `predicate` accepts.
    #[track_caller]
    pub fn then_expect_error_matching(self, predicate: impl FnOnce(&DomainError) -> bool) {
        match self.result {
            Err(error) => {
                assert!(predicate(&error), "{:?} on {:?}: unexpected error {error:?}", self.command, self.state)
            }
            Ok(events) => panic!("{:?} on {:?}: expected an error, got {events:?}", self.command, self.state),
        }
    }

    /// Expects [`DomainError::Invalid`] naming `field`.
    #[track_caller]
    pub fn then_expect_invalid(self, field: &str) {
        self.then_expect_error_matching(|error| matches!(error, DomainError::Invalid { field: f, .. } if *f == field));
    }

    /// The raw outcome, for checks the methods above do not cover.
    pub fn result(self) -> Result<Vec<Event>, DomainError> {
        self.result
    }
}
