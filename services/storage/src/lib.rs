//! The storage service owns repositories: init, usage, quotas, prune and verify,
//! arranged through the control plane. Not built yet.
