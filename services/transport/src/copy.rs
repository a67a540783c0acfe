//! Copy jobs: a snapshot from its repository into another target (offsite, cloud), moving
//! only the blobs the destination lacks. The production source is never read: the copy reads
//! the first repository (see `arca_worker::copy`).

use arca_events::JobKind;
use arca_worker::copy::copy_snapshot;
use arca_worker::{JobContext, JobError, JobHandler, JobOutcome, Targets};

/// Runs copy jobs.
pub struct CopyHandler {
    targets: Targets,
}

impl CopyHandler {
    pub fn new(targets: Targets) -> Self {
        CopyHandler { targets }
    }
}

impl JobHandler for CopyHandler {
    fn kind(&self) -> JobKind {
        JobKind::Copy
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let (Some(destination), Some(snapshot)) = (ctx.job.target, ctx.job.snapshot) else {
            return Err(JobError::Permanent("a copy job names a snapshot and the target to copy it to".into()));
        };
        copy_snapshot(&self.targets, &ctx, snapshot, destination).await
    }
}
