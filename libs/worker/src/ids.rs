//! Ids derived from what they name: the same inputs give the same id in every process, so a
//! step that is retried after a crash appends to the same aggregate instead of a new one.

use arca_events::{JobId, JobKind, ReplicaId, SnapshotId, TargetId};
use uuid::Uuid;

fn derived(context: &str, parts: &[&[u8]]) -> Uuid {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    Uuid::new_v8(bytes)
}

/// The control-plane id of repository snapshot `repo_snapshot` in `target`.
pub fn snapshot_id(target: TargetId, repo_snapshot: &str) -> SnapshotId {
    SnapshotId(derived("arca 2026-11 snapshot id", &[target.as_uuid().as_bytes(), repo_snapshot.as_bytes()]))
}

/// The id of the `kind` job that job `after` asks for (on `target`, when it names one).
pub fn follow_up_job_id(after: JobId, kind: JobKind, target: Option<TargetId>) -> JobId {
    let target = target.map(|t| t.as_uuid()).unwrap_or_default();
    JobId(derived(
        "arca 2026-11 follow-up job id",
        &[after.as_uuid().as_bytes(), kind.as_str().as_bytes(), target.as_bytes()],
    ))
}

/// The id of the job that follows `replica`'s source after `failbacks` failbacks: the API
/// (to stop it on failover) and the failback job (to start the next) agree on it.
pub fn replicate_job_id(replica: ReplicaId, failbacks: u32) -> JobId {
    JobId(derived("arca 2026-11 replicate job id", &[replica.as_uuid().as_bytes(), &failbacks.to_le_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let target = TargetId::new();
        assert_eq!(snapshot_id(target, "ab12"), snapshot_id(target, "ab12"));
        assert_ne!(snapshot_id(target, "ab12"), snapshot_id(target, "ab13"));
        assert_ne!(snapshot_id(target, "ab12"), snapshot_id(TargetId::new(), "ab12"));
        let job = JobId::new();
        assert_eq!(
            follow_up_job_id(job, JobKind::Copy, Some(target)),
            follow_up_job_id(job, JobKind::Copy, Some(target))
        );
        assert_ne!(
            follow_up_job_id(job, JobKind::Copy, Some(target)),
            follow_up_job_id(job, JobKind::Forget, Some(target))
        );
        assert_ne!(
            follow_up_job_id(job, JobKind::Copy, Some(target)),
            follow_up_job_id(job, JobKind::Copy, Some(TargetId::new()))
        );
        let replica = ReplicaId::new();
        assert_eq!(replicate_job_id(replica, 1), replicate_job_id(replica, 1));
        assert_ne!(replicate_job_id(replica, 1), replicate_job_id(replica, 2));
    }
}
