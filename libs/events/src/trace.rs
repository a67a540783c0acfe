//! W3C trace context (`traceparent` / `tracestate`), carried in events and message headers.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// A W3C `traceparent` (version 00) and optional `tracestate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Starts a new trace (sampled).
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        rng.fill_bytes(&mut trace);
        rng.fill_bytes(&mut span);
        Self { traceparent: format!("00-{}-{}-01", hex(&trace), hex(&span)), tracestate: None }
    }

    /// Parses a `traceparent` header; `None` when it is not a valid version-00 value.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let valid = parts.len() == 4
            && parts[0] == "00"
            && is_hex(parts[1], 32)
            && is_hex(parts[2], 16)
            && is_hex(parts[3], 2)
            && parts[1] != "0".repeat(32)
            && parts[2] != "0".repeat(16);
        valid.then(|| Self { traceparent: parts.join("-"), tracestate: tracestate.map(str::to_owned) })
    }

    /// The 32-hex-digit trace id shared by every span of one trace.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The same trace with a new parent span (for the next hop).
    pub fn child(&self) -> Self {
        let mut span = [0u8; 8];
        rand::rng().fill_bytes(&mut span);
        let flags = &self.traceparent[53..55];
        Self {
            traceparent: format!("00-{}-{}-{flags}", self.trace_id(), hex(&span)),
            tracestate: self.tracestate.clone(),
        }
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_child_share_the_trace_id() {
        let root = TraceContext::new_root();
        assert!(TraceContext::parse(&root.traceparent, None).is_some(), "{root}");
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.traceparent, root.traceparent);
        assert!(child.traceparent.ends_with("-01"));
    }

    #[test]
    fn invalid_traceparents_are_rejected() {
        for bad in [
            "",
            "00-abc-def-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad}");
        }
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceContext::parse(good, Some("a=b")).unwrap().tracestate.as_deref(), Some("a=b"));
    }
}
