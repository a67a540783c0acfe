//! Reading old payload versions as the current one.
//!
//! Each upcaster takes version `n` of one event type to version `n + 1`; they chain, so
//! any stored version reaches the current type. Stored events are never rewritten.

use serde_json::{Value, json};

use crate::{DecodeError, Event};

/// Brings `payload` from `version` to the current version of `event_type`.
pub fn to_current(event_type: &str, version: u32, mut payload: Value) -> Result<Value, DecodeError> {
    let current =
        Event::current_version_of(event_type).ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
    if version > current {
        return Err(DecodeError::FutureVersion { event_type: event_type.to_owned(), version, known: current });
    }
    let mut at = version;
    while at < current {
        payload = match (event_type, at) {
            ("PolicyCreated", 1) => policy_created_v1_to_v2(payload),
            _ => return Err(DecodeError::NoUpcaster { event_type: event_type.to_owned(), version: at }),
        }
        .map_err(|reason| DecodeError::Payload { event_type: event_type.to_owned(), reason })?;
        at += 1;
    }
    Ok(payload)
}

/// v1 had a UTC cron string and an optional `keep_last`; v2 has a schedule with a time
/// zone, a misfire rule, a backup mode and the full retention rules.
fn policy_created_v1_to_v2(payload: Value) -> Result<Value, String> {
    let Value::Object(mut fields) = payload else {
        return Err("expected an object".into());
    };
    let cron = fields.remove("cron").ok_or("missing field `cron`")?;
    let cron = cron.as_str().ok_or("`cron` is not a string")?.to_owned();
    let keep_last = fields.remove("keep_last").unwrap_or(Value::Null);
    fields.insert("schedule".into(), json!({"type": "cron", "expression": cron, "timezone": "UTC"}));
    fields.insert("misfire".into(), json!("skip"));
    fields.insert("mode".into(), json!("incremental"));
    let retention = if keep_last.is_null() { json!({}) } else { json!({ "keep_last": keep_last }) };
    fields.insert("retention".into(), retention);
    Ok(Value::Object(fields))
}
