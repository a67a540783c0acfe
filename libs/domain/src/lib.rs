//! Arca aggregates (being built).
