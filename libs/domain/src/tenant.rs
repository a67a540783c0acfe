//! A tenant: a customer of the MSP, with a name, an optional storage quota and its usage.
//!
//! Its facts ([`TenantFacts`](crate::TenantFacts)) decide commands of every other aggregate
//! it owns. A deleted tenant accepts nothing again, not even another `Create`.

use arca_events::{
    AggregateType, Event, TenantCreated, TenantDeleted, TenantQuotaSet, TenantRenamed, TenantResumed, TenantSuspended,
    TenantUsageReported,
};

use crate::{Aggregate, Context, DomainError, TenantStatus, validate};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tenant {
    pub status: TenantStatus,
    pub name: String,
    /// Stored bytes allowed; `None` is unlimited.
    pub quota_bytes: Option<u64>,
    /// Stored bytes, as last reported by the storage service.
    pub used_bytes: u64,
    /// Why it is suspended, while it is.
    pub suspended_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantCommand {
    Create {
        name: String,
        quota_bytes: Option<u64>,
    },
    Rename {
        name: String,
    },
    /// `None` removes the quota.
    SetQuota {
        quota_bytes: Option<u64>,
    },
    ReportUsage {
        used_bytes: u64,
    },
    Suspend {
        reason: String,
    },
    Resume,
    Delete,
}

impl Aggregate for Tenant {
    const TYPE: AggregateType = AggregateType::Tenant;
    type Command = TenantCommand;

    fn handle(&self, command: &TenantCommand, _ctx: &Context) -> Result<Vec<Event>, DomainError> {
        match self.status {
            TenantStatus::Deleted => return Err(DomainError::TenantDeleted),
            TenantStatus::Missing if !matches!(command, TenantCommand::Create { .. }) => {
                return Err(DomainError::NotFound { aggregate: AggregateType::Tenant });
            }
            _ => {}
        }
        let event: Event = match command {
            TenantCommand::Create { name, quota_bytes } => {
                if self.status != TenantStatus::Missing {
                    return Err(DomainError::AlreadyExists { aggregate: AggregateType::Tenant });
                }
                let name = validate::name("name", name)?;
                check_quota(*quota_bytes)?;
                TenantCreated { name, quota_bytes: *quota_bytes }.into()
            }
            TenantCommand::Rename { name } => {
                let name = validate::name("name", name)?;
                if name == self.name {
                    return Ok(vec![]);
                }
                TenantRenamed { name }.into()
            }
            TenantCommand::SetQuota { quota_bytes } => {
                check_quota(*quota_bytes)?;
                if *quota_bytes == self.quota_bytes {
                    return Ok(vec![]);
                }
                TenantQuotaSet { quota_bytes: *quota_bytes }.into()
            }
            TenantCommand::ReportUsage { used_bytes } => {
                if *used_bytes == self.used_bytes {
                    return Ok(vec![]);
                }
                TenantUsageReported { used_bytes: *used_bytes }.into()
            }
            TenantCommand::Suspend { reason } => {
                validate::not_blank("reason", reason)?;
                if self.status == TenantStatus::Suspended {
                    return Ok(vec![]);
                }
                TenantSuspended { reason: reason.trim().to_owned() }.into()
            }
            TenantCommand::Resume => {
                if self.status == TenantStatus::Active {
                    return Ok(vec![]);
                }
                TenantResumed {}.into()
            }
            TenantCommand::Delete => TenantDeleted {}.into(),
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::TenantCreated(e) => {
                self.status = TenantStatus::Active;
                self.name.clone_from(&e.name);
                self.quota_bytes = e.quota_bytes;
            }
            Event::TenantRenamed(e) => self.name.clone_from(&e.name),
            Event::TenantQuotaSet(e) => self.quota_bytes = e.quota_bytes,
            Event::TenantUsageReported(e) => self.used_bytes = e.used_bytes,
            Event::TenantSuspended(e) => {
                self.status = TenantStatus::Suspended;
                self.suspended_reason = Some(e.reason.clone());
            }
            Event::TenantResumed(_) => {
                self.status = TenantStatus::Active;
                self.suspended_reason = None;
            }
            Event::TenantDeleted(_) => self.status = TenantStatus::Deleted,
            _ => {}
        }
    }
}

/// A quota of zero would refuse every backup: that is what suspending is for.
fn check_quota(quota_bytes: Option<u64>) -> Result<(), DomainError> {
    if quota_bytes == Some(0) {
        return Err(DomainError::invalid("quota_bytes", "must be more than 0; leave it out for no quota"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::AggregateTest;

    fn created() -> Event {
        TenantCreated { name: "acme".into(), quota_bytes: None }.into()
    }

    fn every_command() -> Vec<TenantCommand> {
        vec![
            TenantCommand::Create { name: "acme".into(), quota_bytes: None },
            TenantCommand::Rename { name: "acme 2".into() },
            TenantCommand::SetQuota { quota_bytes: Some(10) },
            TenantCommand::ReportUsage { used_bytes: 5 },
            TenantCommand::Suspend { reason: "unpaid".into() },
            TenantCommand::Resume,
            TenantCommand::Delete,
        ]
    }

    #[test]
    fn create_trims_the_name() {
        AggregateTest::<Tenant>::given(vec![])
            .when(TenantCommand::Create { name: "  Acme Corp ".into(), quota_bytes: Some(1 << 40) })
            .then_expect_events(vec![TenantCreated { name: "Acme Corp".into(), quota_bytes: Some(1 << 40) }.into()]);
    }

    #[test]
    fn create_checks_name_and_quota() {
        for name in ["", "  ", &"x".repeat(101), "a\tb"] {
            AggregateTest::<Tenant>::given(vec![])
                .when(TenantCommand::Create { name: name.into(), quota_bytes: None })
                .then_expect_invalid("name");
        }
        AggregateTest::<Tenant>::given(vec![])
            .when(TenantCommand::Create { name: "acme".into(), quota_bytes: Some(0) })
            .then_expect_invalid("quota_bytes");
    }

    #[test]
    fn create_twice_is_refused() {
        AggregateTest::<Tenant>::given(vec![created()])
            .when(TenantCommand::Create { name: "acme".into(), quota_bytes: None })
            .then_expect_error(DomainError::AlreadyExists { aggregate: AggregateType::Tenant });
    }

    #[test]
    fn nothing_but_create_before_create() {
        for command in every_command().into_iter().skip(1) {
            AggregateTest::<Tenant>::given(vec![])
                .when(command)
                .then_expect_error(DomainError::NotFound { aggregate: AggregateType::Tenant });
        }
    }

    #[test]
    fn a_deleted_tenant_accepts_no_command() {
        for command in every_command() {
            AggregateTest::<Tenant>::given(vec![created(), TenantDeleted {}.into()])
                .when(command)
                .then_expect_error(DomainError::TenantDeleted);
        }
    }

    #[test]
    fn commands_that_change_nothing_produce_nothing() {
        let given = || {
            vec![
                TenantCreated { name: "acme".into(), quota_bytes: Some(100) }.into(),
                TenantUsageReported { used_bytes: 7 }.into(),
            ]
        };
        for command in [
            TenantCommand::Rename { name: " acme ".into() },
            TenantCommand::SetQuota { quota_bytes: Some(100) },
            TenantCommand::ReportUsage { used_bytes: 7 },
            TenantCommand::Resume,
        ] {
            AggregateTest::<Tenant>::given(given()).when(command).then_expect_events(vec![]);
        }
        let mut suspended = given();
        suspended.push(TenantSuspended { reason: "unpaid".into() }.into());
        AggregateTest::<Tenant>::given(suspended)
            .when(TenantCommand::Suspend { reason: "still unpaid".into() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn rename_quota_and_usage_change_the_state() {
        let state = AggregateTest::<Tenant>::given(vec![created()])
            .when(TenantCommand::Rename { name: "Acme GmbH".into() })
            .then_expect_events(vec![TenantRenamed { name: "Acme GmbH".into() }.into()]);
        assert_eq!(state.name, "Acme GmbH");
        AggregateTest::<Tenant>::given(vec![created()])
            .when(TenantCommand::SetQuota { quota_bytes: Some(0) })
            .then_expect_invalid("quota_bytes");
        let state = AggregateTest::<Tenant>::given(vec![created(), TenantQuotaSet { quota_bytes: Some(5) }.into()])
            .when(TenantCommand::SetQuota { quota_bytes: None })
            .then_expect_events(vec![TenantQuotaSet { quota_bytes: None }.into()]);
        assert_eq!(state.quota_bytes, None);
        let state = AggregateTest::<Tenant>::given(vec![created()])
            .when(TenantCommand::ReportUsage { used_bytes: 42 })
            .then_expect_events(vec![TenantUsageReported { used_bytes: 42 }.into()]);
        assert_eq!(state.used_bytes, 42);
    }

    #[test]
    fn suspend_and_resume() {
        AggregateTest::<Tenant>::given(vec![created()])
            .when(TenantCommand::Suspend { reason: " ".into() })
            .then_expect_invalid("reason");
        let state = AggregateTest::<Tenant>::given(vec![created()])
            .when(TenantCommand::Suspend { reason: " unpaid ".into() })
            .then_expect_events(vec![TenantSuspended { reason: "unpaid".into() }.into()]);
        assert_eq!((state.status, state.suspended_reason.as_deref()), (TenantStatus::Suspended, Some("unpaid")));
        let state = AggregateTest::<Tenant>::given(vec![created(), TenantSuspended { reason: "unpaid".into() }.into()])
            .when(TenantCommand::Resume)
            .then_expect_events(vec![TenantResumed {}.into()]);
        assert_eq!((state.status, state.suspended_reason), (TenantStatus::Active, None));
    }

    #[test]
    fn a_suspended_tenant_can_still_be_managed_and_deleted() {
        let suspended = || vec![created(), TenantSuspended { reason: "unpaid".into() }.into()];
        AggregateTest::<Tenant>::given(suspended())
            .when(TenantCommand::ReportUsage { used_bytes: 1 })
            .then_expect_events(vec![TenantUsageReported { used_bytes: 1 }.into()]);
        let state = AggregateTest::<Tenant>::given(suspended())
            .when(TenantCommand::Delete)
            .then_expect_events(vec![TenantDeleted {}.into()]);
        assert_eq!(state.status, TenantStatus::Deleted);
    }
}
