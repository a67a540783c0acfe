//! Queries: tenant scoping, filters and cursor pagination.

use std::collections::BTreeSet;

use arca_catalog::CatalogError;
use arca_catalog::queries::*;
use arca_events::*;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::helpers::*;

crate::on_both_backends!(
    tenants_see_only_their_own_rows,
    pagination_walks_every_row_exactly_once,
    filters_select_the_rows_asked_for,
    bad_cursors_are_refused,
    snapshot_pages_as_json_are_the_rows_as_json_values,
);

async fn projected(backend: Backend, tenants: usize, rounds: usize) -> (TestDb, Vec<TenantFacts>) {
    let db = test_db(backend).await;
    let (history, facts) = mixed_history(tenants, rounds);
    project(&db, &history.raw(), 500).await;
    (db, facts)
}

/// Every row id each tenant-scoped list returns for `tenant` (one big page each).
async fn everything_of(db: &DatabaseConnection, tenant: TenantId) -> BTreeSet<Uuid> {
    let all = PageRequest::first(MAX_LIMIT);
    let with_forgotten = SnapshotFilter { include_forgotten: true, ..Default::default() };
    let mut ids = BTreeSet::new();
    ids.extend(list_api_keys(db, tenant, &all).await.unwrap().items.iter().map(|r| r.id));
    ids.extend(list_targets(db, tenant, &all).await.unwrap().items.iter().map(|r| r.id));
    ids.extend(list_sources(db, tenant, &all).await.unwrap().items.iter().map(|r| r.id));
    ids.extend(list_policies(db, tenant, &all).await.unwrap().items.iter().map(|r| r.id));
    ids.extend(list_jobs(db, tenant, &JobFilter::default(), &all).await.unwrap().items.iter().map(|r| r.id));
    ids.extend(list_snapshots(db, tenant, &with_forgotten, &all).await.unwrap().items.iter().map(|r| r.id));
    ids.extend(list_replicas(db, tenant, &all).await.unwrap().items.iter().map(|r| r.id));
    ids.extend(list_restores(db, tenant, &all).await.unwrap().items.iter().map(|r| r.id));
    ids.extend(
        list_audit(db, tenant, &AuditFilter::default(), &all).await.unwrap().items.iter().map(|r| r.aggregate_id),
    );
    ids
}

async fn tenants_see_only_their_own_rows(backend: Backend) {
    let (db, facts) = projected(backend, 2, 6).await;
    let (a, b) = (&facts[0], &facts[1]);

    let of_a = everything_of(&db, a.tenant).await;
    let of_b = everything_of(&db, b.tenant).await;
    assert!(of_a.contains(&a.policy.as_uuid()) && of_a.contains(&a.jobs[0].0.as_uuid()));
    assert!(of_a.is_disjoint(&of_b), "tenant B sees nothing of tenant A");
    assert!(everything_of(&db, TenantId::new()).await.is_empty(), "an unknown tenant sees nothing");

    // Getting A's rows as B finds nothing; as A finds them.
    assert!(get_api_key(&db, b.tenant, a.api_keys[0]).await.unwrap().is_none());
    assert!(get_target(&db, b.tenant, a.targets[0]).await.unwrap().is_none());
    assert!(get_source(&db, b.tenant, a.sources[0]).await.unwrap().is_none());
    assert!(get_policy(&db, b.tenant, a.policy).await.unwrap().is_none());
    assert!(get_job(&db, b.tenant, a.jobs[0].0).await.unwrap().is_none());
    assert!(get_snapshot(&db, b.tenant, a.snapshots[0].0).await.unwrap().is_none());
    assert!(get_replica(&db, b.tenant, a.replica).await.unwrap().is_none());
    assert!(get_restore(&db, b.tenant, a.restores[0].0).await.unwrap().is_none());
    assert!(get_audit_event(&db, b.tenant, 1).await.unwrap().is_none());
    assert_eq!(get_api_key(&db, a.tenant, a.api_keys[0]).await.unwrap().unwrap().name, "key-0");
    assert_eq!(get_target(&db, a.tenant, a.targets[0]).await.unwrap().unwrap().name, "offsite");
    assert_eq!(get_source(&db, a.tenant, a.sources[1]).await.unwrap().unwrap().name, "source-1");
    assert_eq!(get_policy(&db, a.tenant, a.policy).await.unwrap().unwrap().name, "nightly");
    assert_eq!(get_job(&db, a.tenant, a.jobs[0].0).await.unwrap().unwrap().status, a.jobs[0].1);
    assert!(get_snapshot(&db, a.tenant, a.snapshots[0].0).await.unwrap().is_some());
    assert_eq!(get_replica(&db, a.tenant, a.replica).await.unwrap().unwrap().name, "standby");
    assert_eq!(get_restore(&db, a.tenant, a.restores[0].0).await.unwrap().unwrap().status, a.restores[0].1);
    assert_eq!(get_audit_event(&db, a.tenant, 1).await.unwrap().unwrap().event_type, "TenantCreated");
    assert!(get_target(&db, a.tenant, a.removed_target).await.unwrap().is_none(), "removed targets are gone");

    // The MSP's view: every tenant.
    let tenants = list_tenants(&db, &PageRequest::default()).await.unwrap();
    let names: Vec<&str> = tenants.items.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["tenant-0", "tenant-1"]);
    assert_eq!(get_tenant(&db, b.tenant).await.unwrap().unwrap().name, "tenant-1");
    assert!(get_tenant(&db, TenantId::new()).await.unwrap().is_none());

    // Authentication finds a key by its hash, in whichever tenant.
    let key = find_api_key_by_hash(&db, &format!("{:064x}", 11)).await.unwrap().unwrap();
    assert_eq!((key.tenant_id, key.id), (b.tenant.as_uuid(), b.api_keys[1].as_uuid()));
    assert!(find_api_key_by_hash(&db, "00").await.unwrap().is_none());
}

/// Walks every page of a list with `limit`; returns the keys in order.
async fn walk<T, F, Fut>(limit: u32, key: impl Fn(&T) -> String, mut list: F) -> Vec<String>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Page<T>, CatalogError>>,
{
    let mut keys = Vec::new();
    let mut page = PageRequest::first(limit);
    loop {
        let result = list(page.clone()).await.unwrap();
        assert!(result.items.len() <= limit as usize);
        keys.extend(result.items.iter().map(&key));
        match result.next_cursor {
            Some(cursor) => {
                assert_eq!(result.items.len(), limit as usize, "only the last page is short");
                page = PageRequest::after(limit, cursor);
            }
            None => return keys,
        }
    }
}

fn assert_walk(walked: Vec<String>, mut expected: Vec<String>, descending: bool, what: &str) {
    let unique: BTreeSet<&String> = walked.iter().collect();
    assert_eq!(unique.len(), walked.len(), "{what}: a row came twice");
    expected.sort();
    if descending {
        expected.reverse();
    }
    assert_eq!(walked, expected, "{what}: every row once, in order");
}

async fn pagination_walks_every_row_exactly_once(backend: Backend) {
    let (db, facts) = projected(backend, 3, 12).await;
    let f = &facts[1];
    let t = f.tenant;
    let db = &db.db;
    let id = |uuid: Uuid| uuid.to_string();

    for limit in [1, 3, 7] {
        let walked =
            walk(limit, |r: &JobRow| id(r.id), |p| async move { list_jobs(db, t, &JobFilter::default(), &p).await })
                .await;
        let expected = f.jobs.iter().map(|(job, _, _)| id(job.as_uuid())).collect();
        assert_walk(walked, expected, true, "jobs");

        let with_forgotten = SnapshotFilter { include_forgotten: true, ..Default::default() };
        let walked = walk(
            limit,
            |r: &SnapshotRow| id(r.id),
            |p| {
                let filter = with_forgotten.clone();
                async move { list_snapshots(db, t, &filter, &p).await }
            },
        )
        .await;
        let expected = f.snapshots.iter().map(|(s, _)| id(s.as_uuid())).collect();
        assert_walk(walked, expected, true, "snapshots");
    }

    let walked = walk(2, |r: &ApiKeyRow| id(r.id), |p| async move { list_api_keys(db, t, &p).await }).await;
    assert_walk(walked, f.api_keys.iter().map(|k| id(k.as_uuid())).collect(), false, "api keys");
    let walked = walk(1, |r: &TargetRow| id(r.id), |p| async move { list_targets(db, t, &p).await }).await;
    assert_walk(walked, f.targets.iter().map(|k| id(k.as_uuid())).collect(), false, "targets");
    let walked = walk(1, |r: &SourceRow| id(r.id), |p| async move { list_sources(db, t, &p).await }).await;
    assert_walk(walked, f.sources.iter().map(|k| id(k.as_uuid())).collect(), false, "sources");
    let walked = walk(1, |r: &PolicyRow| id(r.id), |p| async move { list_policies(db, t, &p).await }).await;
    assert_walk(walked, vec![id(f.policy.as_uuid())], false, "policies");
    let walked = walk(1, |r: &ReplicaRow| id(r.id), |p| async move { list_replicas(db, t, &p).await }).await;
    assert_walk(walked, vec![id(f.replica.as_uuid())], false, "replicas");
    let walked = walk(1, |r: &RestoreRow| id(r.id), |p| async move { list_restores(db, t, &p).await }).await;
    assert_walk(walked, f.restores.iter().map(|(r, _)| id(r.as_uuid())).collect(), true, "restores");
    let walked = walk(2, |r: &TenantRow| id(r.id), |p| async move { list_tenants(db, &p).await }).await;
    assert_walk(walked, facts.iter().map(|f| id(f.tenant.as_uuid())).collect(), false, "tenants");

    // The audit log pages by stream sequence, newest first.
    let all = list_audit(db, t, &AuditFilter::default(), &PageRequest::first(MAX_LIMIT)).await.unwrap();
    assert!(all.next_cursor.is_none() && all.items.len() > 50, "{} events", all.items.len());
    assert!(all.items.iter().all(|a| a.tenant_id == t.as_uuid()));
    let sequence = |a: &AuditRow| format!("{:010}", a.stream_sequence);
    let walked = walk(9, sequence, |p| async move { list_audit(db, t, &AuditFilter::default(), &p).await }).await;
    assert_walk(walked, all.items.iter().map(sequence).collect(), true, "audit");
}

async fn filters_select_the_rows_asked_for(backend: Backend) {
    let (db, facts) = projected(backend, 2, 10).await;
    let f = &facts[0];
    let all = PageRequest::first(MAX_LIMIT);

    for status in arca_catalog::entities::jobs::JobStatus::ALL {
        let filter = JobFilter { status: Some(status), kind: None, target: None };
        let listed = list_jobs(&db, f.tenant, &filter, &all).await.unwrap().items;
        let expected = f.jobs.iter().filter(|(_, s, _)| *s == status.as_str()).count();
        assert_eq!(listed.len(), expected, "{status}");
        assert!(listed.iter().all(|j| j.status == status.as_str()));
    }
    let forgets = JobFilter { status: Some("succeeded".parse().unwrap()), kind: Some(JobKind::Forget), target: None };
    let listed = list_jobs(&db, f.tenant, &forgets, &all).await.unwrap().items;
    assert_eq!(listed.len(), f.jobs.iter().filter(|(_, _, k)| *k == JobKind::Forget).count());
    assert!(!listed.is_empty());

    let committed = list_snapshots(&db, f.tenant, &SnapshotFilter::default(), &all).await.unwrap().items;
    assert_eq!(committed.len(), f.snapshots.iter().filter(|(_, forgotten)| !forgotten).count());
    assert!(committed.iter().all(|s| s.status == "committed"));
    let times: Vec<_> = committed.iter().map(|s| s.time).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let on_target = SnapshotFilter { target: Some(f.targets[0]), include_forgotten: true, source: None };
    let listed = list_snapshots(&db, f.tenant, &on_target, &all).await.unwrap().items;
    assert_eq!(listed.len(), f.snapshots.len());
    let elsewhere = SnapshotFilter { target: Some(f.targets[1]), include_forgotten: true, source: None };
    assert!(list_snapshots(&db, f.tenant, &elsewhere, &all).await.unwrap().items.is_empty());
    let of_source = SnapshotFilter { source: Some(f.sources[1]), ..Default::default() };
    assert!(list_snapshots(&db, f.tenant, &of_source, &all).await.unwrap().items.is_empty());

    let history = AuditFilter { aggregate_type: None, aggregate_id: Some(f.policy.as_uuid()) };
    let events: Vec<String> =
        list_audit(&db, f.tenant, &history, &all).await.unwrap().items.into_iter().map(|a| a.event_type).collect();
    assert_eq!(events, ["PolicyResumed", "PolicyPaused", "PolicyUpdated", "PolicyCreated"]);
    let keys = AuditFilter { aggregate_type: Some(AggregateType::ApiKey), aggregate_id: None };
    assert_eq!(list_audit(&db, f.tenant, &keys, &all).await.unwrap().items.len(), 4);
}

async fn bad_cursors_are_refused(backend: Backend) {
    let (db, facts) = projected(backend, 1, 2).await;
    let t = facts[0].tenant;
    for cursor in ["%%%", "bm90LWEtdXVpZA", ""] {
        let page = PageRequest::after(10, cursor);
        let error = list_jobs(&db, t, &JobFilter::default(), &page).await.unwrap_err();
        assert!(matches!(error, CatalogError::InvalidCursor(_)), "{cursor}: {error}");
        assert!(!error.is_retryable());
        let error = list_audit(&db, t, &AuditFilter::default(), &page).await.unwrap_err();
        assert!(matches!(error, CatalogError::InvalidCursor(_)), "{cursor}: {error}");
    }
}

/// The snapshot list's bytes, built straight from the rows, read exactly like the rows turned
/// into JSON values and written out (what the API answered before): same keys, same order,
/// same values, page after page, with and without the forgotten ones.
async fn snapshot_pages_as_json_are_the_rows_as_json_values(backend: Backend) {
    let (db, facts) = projected(backend, 2, 10).await;
    let f = &facts[0];
    for filter in [SnapshotFilter::default(), SnapshotFilter { include_forgotten: true, ..Default::default() }] {
        let mut page = PageRequest::first(2);
        let mut pages = 0;
        loop {
            let rows = list_snapshots(&db, f.tenant, &filter, &page).await.unwrap();
            let expected = serde_json::to_vec(&serde_json::to_value(&rows).unwrap()).unwrap();
            let json = list_snapshots_json(&db, f.tenant, &filter, &page).await.unwrap();
            assert_eq!(String::from_utf8(json).unwrap(), String::from_utf8(expected).unwrap());
            pages += 1;
            match rows.next_cursor {
                Some(cursor) => page = PageRequest::after(2, cursor),
                None => break,
            }
        }
        assert!(pages > 1, "several pages were compared");
    }
}
