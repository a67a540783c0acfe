use arca_events::AggregateType;
use chrono::{DateTime, Utc};

/// Why a command was refused. Never temporary: the same command against the same state and
/// context is refused again, so callers report it rather than retry it.
///
/// [`DomainError::code`] gives a stable machine code per variant for problem documents; the
/// comment on each variant names the HTTP status it maps to most naturally.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// 404: the command is for an aggregate that was never created.
    #[error("{} not found", noun(.aggregate))]
    NotFound { aggregate: AggregateType },
    /// 409: a create command for an aggregate that already exists.
    #[error("{} already exists", noun(.aggregate))]
    AlreadyExists { aggregate: AggregateType },
    /// 410: the aggregate was removed or deleted and accepts no command again.
    #[error("{} was removed", noun(.aggregate))]
    Removed { aggregate: AggregateType },
    /// 404: the tenant that would own the aggregate does not exist.
    #[error("tenant not found")]
    TenantNotFound,
    /// 410: the tenant was deleted; nothing of it accepts a command again.
    #[error("tenant was deleted")]
    TenantDeleted,
    /// 403: the tenant is suspended and cannot start new work.
    #[error("tenant is suspended")]
    TenantSuspended,
    /// 422: a value in the command breaks a rule; `field` names it as the command does.
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// 403: the tenant has used its whole quota; work that adds data is refused.
    #[error("tenant quota exceeded: {used} of {quota} bytes used")]
    QuotaExceeded { used: u64, quota: u64 },
    /// 409: the aggregate's state does not allow the command.
    #[error("cannot {command} while {from}")]
    IllegalTransition { from: String, command: &'static str },
    /// 409: the snapshot is locked and cannot be forgotten before `until`.
    #[error("snapshot is locked until {until}")]
    SnapshotLocked { until: DateTime<Utc> },
}

impl DomainError {
    /// A stable, machine-readable code: part of the API, never renamed.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::NotFound { .. } => "not_found",
            DomainError::AlreadyExists { .. } => "already_exists",
            DomainError::Removed { .. } => "removed",
            DomainError::TenantNotFound => "tenant_not_found",
            DomainError::TenantDeleted => "tenant_deleted",
            DomainError::TenantSuspended => "tenant_suspended",
            DomainError::Invalid { .. } => "invalid",
            DomainError::QuotaExceeded { .. } => "quota_exceeded",
            DomainError::IllegalTransition { .. } => "illegal_transition",
            DomainError::SnapshotLocked { .. } => "snapshot_locked",
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DomainError::Invalid { field, reason: reason.into() }
    }

    pub(crate) fn illegal(from: impl Into<String>, command: &'static str) -> Self {
        DomainError::IllegalTransition { from: from.into(), command }
    }
}

/// `api key` for [`AggregateType::ApiKey`]: the aggregate as a message names it.
fn noun(aggregate: &AggregateType) -> String {
    aggregate.as_str().replace('_', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_thing_in_lower_case_without_a_period() {
        let errors = [
            DomainError::NotFound { aggregate: AggregateType::ApiKey },
            DomainError::AlreadyExists { aggregate: AggregateType::Policy },
            DomainError::Removed { aggregate: AggregateType::Target },
            DomainError::TenantNotFound,
            DomainError::TenantDeleted,
            DomainError::TenantSuspended,
            DomainError::invalid("location", "`s3://x` is too short"),
            DomainError::QuotaExceeded { used: 10, quota: 5 },
            DomainError::illegal("succeeded", "start"),
            DomainError::SnapshotLocked { until: DateTime::UNIX_EPOCH },
        ];
        let mut codes = std::collections::BTreeSet::new();
        for error in &errors {
            let message = error.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(!message.ends_with('.'), "{message}");
            assert!(codes.insert(error.code()), "duplicate code {}", error.code());
        }
        assert_eq!(errors[0].to_string(), "api key not found");
        assert_eq!(errors[6].to_string(), "invalid `location`: `s3://x` is too short");
        assert_eq!(errors[8].to_string(), "cannot start while succeeded");
    }
}
