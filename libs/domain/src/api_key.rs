//! An API key: a role in one tenant, or MSP-wide for keys of [`TenantId::SYSTEM`].
//!
//! Only the key's SHA-256 is ever stored; the key itself is shown once to whoever created it.
//! A key of `SYSTEM` is always an MSP admin and only such keys are: a tenant's key can never
//! reach beyond its tenant.
//!
//! The tenant is part of [`ApiKeyCommand::Create`] because the role rule needs it. It is not in
//! the state: `ApiKeyCreated` does not carry it (the envelope does), so a state rebuilt from
//! events could not know it, and no later rule needs it.

use arca_events::{AggregateType, ApiKeyCreated, ApiKeyRevoked, Event, Role, TenantId};
use chrono::{DateTime, Utc};

use crate::{Aggregate, Context, DomainError, validate};

/// The longest key prefix kept for display, in characters.
pub const MAX_PREFIX_CHARS: usize = 32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ApiKeyStatus {
    #[default]
    Missing,
    Active,
    Revoked,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiKey {
    pub status: ApiKeyStatus,
    pub name: String,
    /// `None` until created.
    pub role: Option<Role>,
    pub prefix: String,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
}

impl ApiKey {
    /// True when the key may authenticate a request at `now`: created, not revoked, not expired.
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.status == ApiKeyStatus::Active && self.expires_at.is_none_or(|expires_at| now < expires_at)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiKeyCommand {
    Create {
        /// The tenant the key belongs to; [`TenantId::SYSTEM`] for MSP-wide keys.
        tenant: TenantId,
        name: String,
        role: Role,
        prefix: String,
        hash: String,
        expires_at: Option<DateTime<Utc>>,
    },
    Revoke {
        reason: Option<String>,
    },
}

impl Aggregate for ApiKey {
    const TYPE: AggregateType = AggregateType::ApiKey;
    type Command = ApiKeyCommand;

    fn handle(&self, command: &ApiKeyCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        match command {
            ApiKeyCommand::Create { tenant, name, role, prefix, hash, expires_at } => {
                if self.status != ApiKeyStatus::Missing {
                    return Err(DomainError::AlreadyExists { aggregate: AggregateType::ApiKey });
                }
                let name = validate::name("name", name)?;
                check_role(*tenant, *role)?;
                check_prefix(prefix)?;
                validate::sha256_hex("hash", hash)?;
                if let Some(expires_at) = expires_at
                    && *expires_at <= ctx.now
                {
                    return Err(DomainError::invalid("expires_at", format!("{expires_at} is not in the future")));
                }
                let created = ApiKeyCreated {
                    name,
                    role: *role,
                    prefix: prefix.clone(),
                    hash: hash.clone(),
                    expires_at: *expires_at,
                };
                Ok(vec![created.into()])
            }
            ApiKeyCommand::Revoke { reason } => match self.status {
                ApiKeyStatus::Missing => Err(DomainError::NotFound { aggregate: AggregateType::ApiKey }),
                ApiKeyStatus::Revoked => Ok(vec![]),
                ApiKeyStatus::Active => Ok(vec![ApiKeyRevoked { reason: reason.clone() }.into()]),
            },
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::ApiKeyCreated(e) => {
                self.status = ApiKeyStatus::Active;
                self.name.clone_from(&e.name);
                self.role = Some(e.role);
                self.prefix.clone_from(&e.prefix);
                self.hash.clone_from(&e.hash);
                self.expires_at = e.expires_at;
            }
            Event::ApiKeyRevoked(e) => {
                self.status = ApiKeyStatus::Revoked;
                self.revoked_reason.clone_from(&e.reason);
            }
            _ => {}
        }
    }
}

fn check_role(tenant: TenantId, role: Role) -> Result<(), DomainError> {
    match (tenant.is_system(), role == Role::MspAdmin) {
        (true, false) => Err(DomainError::invalid("role", "an MSP-wide key must have the `msp_admin` role")),
        (false, true) => Err(DomainError::invalid("role", "only MSP-wide keys can have the `msp_admin` role")),
        _ => Ok(()),
    }
}

fn check_prefix(prefix: &str) -> Result<(), DomainError> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_CHARS || !prefix.chars().all(|c| c.is_ascii_graphic()) {
        return Err(DomainError::invalid(
            "prefix",
            format!("must be 1 to {MAX_PREFIX_CHARS} printable ASCII characters without spaces"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::testing::{AggregateTest, T0};

    fn hash() -> String {
        "ab".repeat(32)
    }

    fn create(tenant: TenantId, role: Role) -> ApiKeyCommand {
        ApiKeyCommand::Create {
            tenant,
            name: "ci".into(),
            role,
            prefix: "arca_1a2b".into(),
            hash: hash(),
            expires_at: Some(T0 + TimeDelta::days(30)),
        }
    }

    fn created(role: Role) -> Event {
        ApiKeyCreated { name: "ci".into(), role, prefix: "arca_1a2b".into(), hash: hash(), expires_at: None }.into()
    }

    #[test]
    fn tenant_keys_have_tenant_roles() {
        let tenant = TenantId::new();
        for role in [Role::TenantAdmin, Role::Operator, Role::Viewer] {
            let state = AggregateTest::<ApiKey>::given(vec![]).when(create(tenant, role)).then_expect_events(vec![
                ApiKeyCreated {
                    name: "ci".into(),
                    role,
                    prefix: "arca_1a2b".into(),
                    hash: hash(),
                    expires_at: Some(T0 + TimeDelta::days(30)),
                }
                .into(),
            ]);
            assert!(state.is_usable_at(T0));
            assert!(!state.is_usable_at(T0 + TimeDelta::days(30)));
        }
        AggregateTest::<ApiKey>::given(vec![]).when(create(tenant, Role::MspAdmin)).then_expect_invalid("role");
    }

    #[test]
    fn system_keys_are_msp_admins() {
        let state = AggregateTest::<ApiKey>::given(vec![])
            .with_tenant(crate::TenantFacts::system())
            .when(create(TenantId::SYSTEM, Role::MspAdmin))
            .then_expect_events(vec![
                ApiKeyCreated {
                    name: "ci".into(),
                    role: Role::MspAdmin,
                    prefix: "arca_1a2b".into(),
                    hash: hash(),
                    expires_at: Some(T0 + TimeDelta::days(30)),
                }
                .into(),
            ]);
        assert_eq!(state.role, Some(Role::MspAdmin));
        for role in [Role::TenantAdmin, Role::Operator, Role::Viewer] {
            AggregateTest::<ApiKey>::given(vec![])
                .with_tenant(crate::TenantFacts::system())
                .when(create(TenantId::SYSTEM, role))
                .then_expect_invalid("role");
        }
    }

    #[test]
    fn create_checks_its_values() {
        let create_with =
            |name: &str, prefix: &str, hash: String, expires_at: Option<DateTime<Utc>>| ApiKeyCommand::Create {
                tenant: TenantId::new(),
                name: name.into(),
                role: Role::Operator,
                prefix: prefix.into(),
                hash,
                expires_at,
            };
        for (field, command) in [
            ("name", create_with(" ", "arca_1", hash(), None)),
            ("prefix", create_with("ci", "", hash(), None)),
            ("prefix", create_with("ci", "arca key", hash(), None)),
            ("prefix", create_with("ci", &"x".repeat(33), hash(), None)),
            ("hash", create_with("ci", "arca_1", "AB".repeat(32), None)),
            ("hash", create_with("ci", "arca_1", "ab".repeat(16), None)),
            ("expires_at", create_with("ci", "arca_1", hash(), Some(T0))),
            ("expires_at", create_with("ci", "arca_1", hash(), Some(T0 - TimeDelta::seconds(1)))),
        ] {
            AggregateTest::<ApiKey>::given(vec![]).when(command).then_expect_invalid(field);
        }
    }

    #[test]
    fn create_twice_is_refused() {
        AggregateTest::<ApiKey>::given(vec![created(Role::Viewer)])
            .when(create(TenantId::new(), Role::Viewer))
            .then_expect_error(DomainError::AlreadyExists { aggregate: AggregateType::ApiKey });
    }

    #[test]
    fn revoke_once_then_nothing() {
        AggregateTest::<ApiKey>::given(vec![])
            .when(ApiKeyCommand::Revoke { reason: None })
            .then_expect_error(DomainError::NotFound { aggregate: AggregateType::ApiKey });
        let state = AggregateTest::<ApiKey>::given(vec![created(Role::Viewer)])
            .when(ApiKeyCommand::Revoke { reason: Some("leaked".into()) })
            .then_expect_events(vec![ApiKeyRevoked { reason: Some("leaked".into()) }.into()]);
        assert!(!state.is_usable_at(T0));
        AggregateTest::<ApiKey>::given(vec![created(Role::Viewer), ApiKeyRevoked { reason: None }.into()])
            .when(ApiKeyCommand::Revoke { reason: Some("again".into()) })
            .then_expect_events(vec![]);
    }
}
