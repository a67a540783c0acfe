//! Identifiers: validated newtypes over UUIDv7 (time-ordered, so ids sort by creation).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self(Uuid::nil())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = crate::IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| crate::IdError { kind: stringify!($name), value: s.chars().take(64).collect() })
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

id_type!(
    /// A tenant (a customer of the MSP). [`TenantId::SYSTEM`] owns MSP-wide things.
    TenantId
);
id_type!(ApiKeyId);
id_type!(TargetId);
id_type!(SourceId);
id_type!(PolicyId);
id_type!(JobId);
id_type!(SnapshotId);
id_type!(ReplicaId);
id_type!(RestoreId);
id_type!(
    /// A credential sealed in the secret store; events carry only this reference.
    SecretId
);

impl TenantId {
    /// The MSP itself: owns MSP-admin API keys and nothing a tenant can see.
    pub const SYSTEM: TenantId = TenantId(Uuid::nil());

    pub fn is_system(&self) -> bool {
        self.0.is_nil()
    }
}

/// A string that is not a valid id of the named kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind} (expected a UUID)")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
}
