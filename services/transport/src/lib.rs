//! The transport service moves data *in*: it pulls backup, copy and replication jobs
//! from the work queue and runs them with `arca-repo`. Not built yet.
