//! Black-box tests of the aggregates through the public API only.

mod properties;
mod tenant_rules;
