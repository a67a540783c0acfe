//! Arca's aggregates: every business rule of the platform, as pure functions over events.
//!
//! Each aggregate (tenant, API key, target, source, policy, job, snapshot, replica, restore)
//! is a state struct built from its own events and a command enum. The work is split in two,
//! as in cqrs-es:
//!
//! - **decide** — [`Aggregate::handle`] takes the current state, a command and a [`Context`]
//!   and returns the events the command produces, or a [`DomainError`] saying which rule it
//!   breaks. Every rule lives here. A command that asks for what is already so (rename to the
//!   same name, resume an active tenant, revoke a revoked key, forget a forgotten snapshot)
//!   returns no events rather than an error, so retrying it is harmless.
//! - **evolve** — [`Aggregate::apply`] folds one event into the state. It holds no rules and
//!   never panics: the log is the truth, and whatever it holds must load. [`replay`] is just
//!   `apply` over a history.
//!
//! **Architecture Invariant:** there is no IO here: no NATS, no SQL, no clock, no randomness.
//! Whatever a rule needs from outside its own history comes in through the [`Context`]: the
//! time of the decision and a few facts about the tenant that owns the aggregate (its status,
//! quota and usage), which the executor in `arca-bus` loads from the tenant aggregate before it
//! asks. That keeps every rule a plain function, testable with [`testing::AggregateTest`]
//! (given events, when a command, then events or an error) and with property tests.
//!
//! Rules common to every aggregate but the tenant itself: a command for a tenant that does not
//! exist fails with [`DomainError::TenantNotFound`], one for a deleted tenant with
//! [`DomainError::TenantDeleted`]. A suspended tenant keeps its configuration and lets running
//! work finish, but cannot start new work ([`DomainError::TenantSuspended`]). Aggregates of
//! [`TenantId::SYSTEM`](arca_events::TenantId::SYSTEM) (the MSP's own API keys) are decided with
//! [`TenantFacts::system`].
//!
//! | module | state | commands |
//! |---|---|---|
//! | [`tenant`] | [`Tenant`](tenant::Tenant) | create, rename, set quota, report usage, suspend, resume, delete |
//! | [`api_key`] | [`ApiKey`](api_key::ApiKey) | create, revoke |
//! | [`target`] | [`Target`](target::Target) | add, update, remove |
//! | [`source`] | [`Source`](source::Source) | add, update, remove |
//! | [`policy`] | [`Policy`](policy::Policy) | create, update, pause, resume, delete |
//! | [`job`] | [`Job`](job::Job) | request, start, checkpoint, succeed, fail, cancel |
//! | [`snapshot`] | [`Snapshot`](snapshot::Snapshot) | commit, lock, forget |
//! | [`replica`] | [`Replica`](replica::Replica) | create, record point, fail over, fail back, delete |
//! | [`restore`] | [`Restore`](restore::Restore) | request, succeed, fail |
//!
//! Value checks shared by several aggregates (names, site labels, target locations, schedules)
//! are in [`validate`] and [`schedule`]; the API can call them early for friendlier errors, but
//! the aggregates check again, so no event ever carries a value they refuse.

pub mod api_key;
mod error;
pub mod export;
pub mod job;
pub mod policy;
pub mod replica;
pub mod restore;
pub mod schedule;
pub mod snapshot;
pub mod source;
pub mod target;
pub mod tenant;
pub mod testing;
pub mod validate;

use arca_events::{AggregateType, Event};
use chrono::{DateTime, Utc};

pub use error::DomainError;

/// One kind of aggregate: its state, its commands, and how the two meet its events.
pub trait Aggregate: Default + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    const TYPE: AggregateType;
    type Command: std::fmt::Debug + Clone + Send + Sync;

    /// Every business rule lives here. Takes the command by reference so a caller can retry after reloading.
    fn handle(&self, command: &Self::Command, ctx: &Context) -> Result<Vec<Event>, DomainError>;

    /// Holds no rules and never panics; ignores events of other aggregates.
    fn apply(&mut self, event: &Event);
}

/// The state an aggregate reaches after `events`, in order.
pub fn replay<A: Aggregate>(events: &[Event]) -> A {
    let mut state = A::default();
    for event in events {
        state.apply(event);
    }
    state
}

/// What a decision may know beyond the aggregate's own history.
#[derive(Clone, Debug, PartialEq)]
pub struct Context {
    /// The time of the decision; rules never read a clock themselves.
    pub now: DateTime<Utc>,
    /// The tenant that owns the aggregate, as of this decision.
    pub tenant: TenantFacts,
}

impl Context {
    pub fn new(now: DateTime<Utc>, tenant: TenantFacts) -> Self {
        Self { now, tenant }
    }
}

/// Where an aggregate that can be added and removed is in its life (targets, sources, replicas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    /// Never added.
    #[default]
    Missing,
    Active,
    /// Removed for good: refuses every command with [`DomainError::Removed`].
    Removed,
}

impl Lifecycle {
    /// The common rule for commands other than the one that adds the aggregate.
    pub(crate) fn require_active(&self, aggregate: AggregateType) -> Result<(), DomainError> {
        match self {
            Lifecycle::Missing => Err(DomainError::NotFound { aggregate }),
            Lifecycle::Removed => Err(DomainError::Removed { aggregate }),
            Lifecycle::Active => Ok(()),
        }
    }

    /// The common rule for the command that adds the aggregate.
    pub(crate) fn require_missing(&self, aggregate: AggregateType) -> Result<(), DomainError> {
        match self {
            Lifecycle::Missing => Ok(()),
            Lifecycle::Active => Err(DomainError::AlreadyExists { aggregate }),
            Lifecycle::Removed => Err(DomainError::Removed { aggregate }),
        }
    }
}

/// Where a tenant is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TenantStatus {
    /// Never created (or not yet visible).
    #[default]
    Missing,
    Active,
    /// Keeps its data and configuration, runs no new jobs.
    Suspended,
    /// Gone for good: nothing of it accepts a command again.
    Deleted,
}

impl TenantStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            TenantStatus::Missing => "missing",
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
        }
    }
}

/// The facts about a tenant that rules of its other aggregates depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantFacts {
    pub status: TenantStatus,
    pub quota_bytes: Option<u64>,
    pub used_bytes: u64,
}

impl TenantFacts {
    pub fn from_state(tenant: &tenant::Tenant) -> Self {
        Self { status: tenant.status, quota_bytes: tenant.quota_bytes, used_bytes: tenant.used_bytes }
    }

    /// The facts for [`TenantId::SYSTEM`](arca_events::TenantId::SYSTEM): the MSP always exists and has no quota.
    pub fn system() -> Self {
        Self::active()
    }

    /// An active tenant without a quota.
    pub fn active() -> Self {
        Self { status: TenantStatus::Active, quota_bytes: None, used_bytes: 0 }
    }

    /// True when the tenant has a quota and has used all of it.
    pub fn is_over_quota(&self) -> bool {
        self.quota_bytes.is_some_and(|quota| self.used_bytes >= quota)
    }

    /// The common rule: a command for anything of a missing or deleted tenant is refused.
    pub fn require_exists(&self) -> Result<(), DomainError> {
        match self.status {
            TenantStatus::Missing => Err(DomainError::TenantNotFound),
            TenantStatus::Deleted => Err(DomainError::TenantDeleted),
            TenantStatus::Active | TenantStatus::Suspended => Ok(()),
        }
    }

    /// [`TenantFacts::require_exists`], and not suspended: for commands that start new work.
    pub fn require_active(&self) -> Result<(), DomainError> {
        self.require_exists()?;
        match self.status {
            TenantStatus::Suspended => Err(DomainError::TenantSuspended),
            _ => Ok(()),
        }
    }
}
