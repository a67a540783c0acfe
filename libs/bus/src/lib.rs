//! JetStream event store (being built).
