//! What every service that runs jobs shares.
//!
//! - [`keys::ServerKey`]: the deployment's secret key. It seals credentials in the secret
//!   store and derives each tenant's repository key and repository identity, so every
//!   repository of a tenant opens with a key no event or log ever holds, and every two
//!   repositories of one tenant give equal content equal blob ids (a copy moves only what
//!   the destination lacks) while different tenants' ids reveal nothing to each other.
//! - [`targets::Targets`]: a tenant's target as its events describe it, with its sealed
//!   credentials, opened (or created) as an `arca-repo` repository.
//! - [`runner`]: the job loop — pull a ticket, record the start, keep the delivery alive,
//!   publish live progress, record success or failure, request follow-up jobs, retry
//!   temporary failures with backoff — around a [`runner::JobHandler`] that does the work.
//! - [`hooks`]: pre- and post-hook commands.
//! - [`copy`]: a committed snapshot into another target, recorded there.
//! - [`ids`]: deterministic ids, so a retried step names the same snapshot or job.
//! - [`usage`]: stored bytes per target and the tenant's total, for quotas.
//!
//! Repositories are used on blocking threads only: `arca_repo::Backend` owns a small Tokio
//! runtime, which must not be dropped inside an async context.

pub mod copy;
pub mod folders;
pub mod hooks;
pub mod ids;
pub mod keys;
pub mod runner;
pub mod targets;
pub mod usage;

pub use folders::Folders;
pub use runner::{FollowUp, JobContext, JobError, JobHandler, JobOutcome, WorkerSettings};
pub use targets::{TargetSpec, Targets};
