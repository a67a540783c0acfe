//! The file index: ranges of snapshots per file version, search, browse, tenant scoping,
//! idempotence, order and forgetting.

use std::sync::Arc;
use std::time::Duration;

use arca_catalog::CatalogError;
use arca_catalog::entities::{indexed_snapshots, snapshot_files};
use arca_catalog::files::*;
use arca_catalog::queries::PageRequest;
use arca_events::*;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use crate::helpers::*;

crate::on_both_backends!(
    an_unchanged_snapshot_adds_one_row_and_no_file_rows,
    changes_close_ranges_and_open_new_ones,
    search_expands_ranges_into_snapshots,
    search_by_folder_and_glob,
    browse_lists_the_children_of_a_folder,
    tenants_see_only_their_own_files,
    indexing_again_changes_nothing,
    older_snapshots_are_refused_and_a_series_can_be_rebuilt,
    forgotten_snapshots_leave_the_answers,
);

/// A tenant with committed snapshots in the catalog (the file index shows only those).
struct Tenant {
    tenant: TenantId,
    source: SourceId,
    snapshots: Vec<(SnapshotId, DateTime<Utc>)>,
}

/// Projects `count` committed snapshots of one source for a new tenant, one minute apart.
async fn tenant_with_snapshots(db: &DatabaseConnection, history: &mut History, count: usize) -> Tenant {
    let tenant = TenantId::new();
    let (source, target) = (SourceId::new(), TargetId::new());
    history.record(tenant, tenant, TenantCreated { name: "files".into(), quota_bytes: None });
    let mut snapshots = Vec::new();
    for round in 0..count {
        let snapshot = SnapshotId::new();
        let time = history.now() + chrono::Duration::minutes(1);
        history.record(
            tenant,
            snapshot,
            SnapshotCommitted {
                target,
                repo_snapshot: format!("{round:064x}"),
                time,
                host: "web-1".into(),
                paths: vec!["/home".into()],
                tags: vec![],
                source: Some(source),
                policy: None,
                job: None,
                files: 0,
                size_bytes: 0,
                added_bytes: 0,
                partial: false,
            },
        );
        snapshots.push((snapshot, time));
    }
    let raw = history.raw();
    let projector = arca_catalog::Projector::new(db.clone());
    projector.apply_batch(&raw).await.expect("project the snapshots");
    Tenant { tenant, source, snapshots }
}

fn file(path: &str, size: u64, mtime_ns: i64) -> FileEntry {
    FileEntry { path: path.into(), kind: FileKind::File, size, mtime_ns }
}

fn dir(path: &str) -> FileEntry {
    FileEntry { path: path.into(), kind: FileKind::Dir, size: 0, mtime_ns: 1_000 }
}

/// `/home`, `/home/ann` with three files, `/home/bob` with one, and a symlink.
fn first_tree() -> Vec<FileEntry> {
    vec![
        dir("/home"),
        dir("/home/ann"),
        file("/home/ann/a.txt", 10, 1_000),
        file("/home/ann/b.txt", 20, 1_000),
        file("/home/ann/report.pdf", 30, 1_000),
        dir("/home/bob"),
        file("/home/bob/notes.md", 40, 1_000),
        FileEntry { path: "/home/link".into(), kind: FileKind::Symlink, size: 0, mtime_ns: 1_000 },
    ]
}

/// [`first_tree`] with `report.pdf` changed, `b.txt` deleted and `c.txt` added.
fn second_tree() -> Vec<FileEntry> {
    let mut tree: Vec<FileEntry> = first_tree().into_iter().filter(|e| e.path != "/home/ann/b.txt").collect();
    for entry in &mut tree {
        if entry.path == "/home/ann/report.pdf" {
            (entry.size, entry.mtime_ns) = (31, 2_000);
        }
    }
    tree.push(file("/home/ann/c.txt", 50, 2_000));
    tree
}

async fn index(db: &DatabaseConnection, t: &Tenant, n: usize, entries: Vec<FileEntry>) -> IndexOutcome {
    let (snapshot, time) = t.snapshots[n];
    index_snapshot(db, t.tenant, snapshot, &Series::Source(t.source), time, entries).await.expect("index a snapshot")
}

async fn file_rows(db: &DatabaseConnection, path: &str) -> Vec<snapshot_files::Model> {
    let (parent, name) = path.rsplit_once('/').unwrap();
    snapshot_files::Entity::find()
        .filter(snapshot_files::Column::Parent.eq(parent))
        .filter(snapshot_files::Column::Name.eq(name))
        .order_by_asc(snapshot_files::Column::FirstOrdinal)
        .all(db)
        .await
        .unwrap()
}

fn ranges(rows: &[snapshot_files::Model]) -> Vec<(i64, Option<i64>)> {
    rows.iter().map(|row| (row.first_ordinal, row.last_ordinal)).collect()
}

async fn search_all(db: &DatabaseConnection, tenant: TenantId, path: &str) -> Vec<VersionHit> {
    let request = SearchRequest { path: path.into(), series: None };
    let mut hits = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let answer = search(db, tenant, &request, &page).await.expect("search");
        hits.extend(answer.items);
        match answer.next_cursor {
            Some(cursor) => page = PageRequest::after(2, cursor),
            None => return hits,
        }
    }
}

fn snapshot_ids(hit: &VersionHit) -> Vec<Uuid> {
    hit.snapshots.iter().map(|s| s.id).collect()
}

async fn an_unchanged_snapshot_adds_one_row_and_no_file_rows(backend: Backend) {
    let db = test_db(backend).await;
    let t = tenant_with_snapshots(&db, &mut History::new(), 3).await;
    let first = index(&db, &t, 0, first_tree()).await;
    assert_eq!((first.ordinal, first.entries, first.rows_added, first.rows_closed), (1, 8, 8, 0));
    let files_before = snapshot_files::Entity::find().count(&*db).await.unwrap();

    let second = index(&db, &t, 1, first_tree()).await;
    assert_eq!((second.ordinal, second.entries, second.rows_added, second.rows_closed), (2, 8, 0, 0));
    assert_eq!(snapshot_files::Entity::find().count(&*db).await.unwrap(), files_before, "no file row written");
    assert_eq!(indexed_snapshots::Entity::find().count(&*db).await.unwrap(), 2, "one indexed_snapshots row");
    let open = snapshot_files::Entity::find().filter(snapshot_files::Column::LastOrdinal.is_null()).count(&*db);
    assert_eq!(open.await.unwrap(), files_before, "every range still open");
}

async fn changes_close_ranges_and_open_new_ones(backend: Backend) {
    let db = test_db(backend).await;
    let t = tenant_with_snapshots(&db, &mut History::new(), 3).await;
    index(&db, &t, 0, first_tree()).await;
    let second = index(&db, &t, 1, second_tree()).await;
    // report.pdf changed (close + open), b.txt deleted (close), c.txt new (open).
    assert_eq!((second.rows_added, second.rows_closed), (2, 2));

    assert_eq!(ranges(&file_rows(&db, "/home/ann/report.pdf").await), [(1, Some(1)), (2, None)]);
    assert_eq!(ranges(&file_rows(&db, "/home/ann/b.txt").await), [(1, Some(1))]);
    assert_eq!(ranges(&file_rows(&db, "/home/ann/c.txt").await), [(2, None)]);
    assert_eq!(ranges(&file_rows(&db, "/home/ann/a.txt").await), [(1, None)]);

    // A path that comes back opens a new range; one that goes away in the third closes at 2.
    let mut third = first_tree();
    third.retain(|e| e.path != "/home/bob/notes.md");
    let outcome = index(&db, &t, 2, third).await;
    assert_eq!(ranges(&file_rows(&db, "/home/ann/b.txt").await), [(1, Some(1)), (3, None)]);
    assert_eq!(ranges(&file_rows(&db, "/home/bob/notes.md").await), [(1, Some(2))]);
    assert_eq!(ranges(&file_rows(&db, "/home/ann/report.pdf").await), [(1, Some(1)), (2, Some(2)), (3, None)]);
    assert_eq!(ranges(&file_rows(&db, "/home/ann/c.txt").await), [(2, Some(2))]);
    // b.txt back, report.pdf back to its first version: 2 opened; notes.md, c.txt, report.pdf v2: 3 closed.
    assert_eq!((outcome.rows_added, outcome.rows_closed), (2, 3));
}

async fn search_expands_ranges_into_snapshots(backend: Backend) {
    let db = test_db(backend).await;
    let t = tenant_with_snapshots(&db, &mut History::new(), 3).await;
    index(&db, &t, 0, first_tree()).await;
    index(&db, &t, 1, second_tree()).await;
    index(&db, &t, 2, second_tree()).await;
    let ids: Vec<Uuid> = t.snapshots.iter().map(|(id, _)| id.as_uuid()).collect();

    let report = search_all(&db, t.tenant, "/home/ann/report.pdf").await;
    assert_eq!(report.len(), 2, "two versions: {report:?}");
    assert_eq!((report[0].size, snapshot_ids(&report[0])), (30, vec![ids[0]]));
    assert_eq!((report[1].size, snapshot_ids(&report[1])), (31, vec![ids[1], ids[2]]));
    assert_eq!(report[1].mtime, DateTime::from_timestamp_nanos(2_000));
    assert_eq!(report[1].series, t.source.as_uuid());
    assert_eq!(report[1].snapshots[1].time, t.snapshots[2].1);

    let deleted = search_all(&db, t.tenant, "/home/ann/b.txt").await;
    assert_eq!(deleted.iter().map(snapshot_ids).collect::<Vec<_>>(), [vec![ids[0]]]);
    let unchanged = search_all(&db, t.tenant, "home/ann/a.txt").await;
    assert_eq!(unchanged.iter().map(snapshot_ids).collect::<Vec<_>>(), [ids]);
    assert!(search_all(&db, t.tenant, "/home/ann/nothing.txt").await.is_empty());

    // Only one series, when asked.
    let other = SearchRequest { path: "/home/ann/a.txt".into(), series: Some(Uuid::now_v7()) };
    assert!(search(&db, t.tenant, &other, &PageRequest::default()).await.unwrap().items.is_empty());
    let mine = SearchRequest { path: "/home/ann/a.txt".into(), series: Some(t.source.as_uuid()) };
    assert_eq!(search(&db, t.tenant, &mine, &PageRequest::default()).await.unwrap().items.len(), 1);
}

async fn search_by_folder_and_glob(backend: Backend) {
    let db = test_db(backend).await;
    let t = tenant_with_snapshots(&db, &mut History::new(), 2).await;
    let mut tree = first_tree();
    // Siblings whose names sort next to `ann` must not leak into a search under `/home/ann/`.
    tree.extend([
        dir("/home/ann.old"),
        file("/home/ann.old/x.txt", 1, 1),
        dir("/home/anna"),
        file("/home/anna/y", 1, 1),
    ]);
    index(&db, &t, 0, tree).await;
    index(&db, &t, 1, second_tree()).await;

    let paths = |hits: Vec<VersionHit>| hits.into_iter().map(|h| h.path).collect::<Vec<_>>();
    assert_eq!(
        paths(search_all(&db, t.tenant, "/home/ann/").await),
        ["/home/ann/a.txt", "/home/ann/b.txt", "/home/ann/c.txt", "/home/ann/report.pdf", "/home/ann/report.pdf"]
    );
    assert_eq!(
        paths(search_all(&db, t.tenant, "/home/*/*.txt").await),
        ["/home/ann/a.txt", "/home/ann/b.txt", "/home/ann/c.txt", "/home/ann.old/x.txt"]
    );
    assert_eq!(paths(search_all(&db, t.tenant, "**/notes.md").await), ["/home/bob/notes.md"]);
    assert_eq!(paths(search_all(&db, t.tenant, "/home/ann/rep*").await), ["/home/ann/report.pdf"; 2]);
    let bad = SearchRequest { path: "/home/[".into(), series: None };
    let refused = search(&db, t.tenant, &bad, &PageRequest::default()).await;
    assert!(matches!(refused, Err(CatalogError::InvalidPattern(_))), "{refused:?}");
}

async fn browse_lists_the_children_of_a_folder(backend: Backend) {
    let db = test_db(backend).await;
    let t = tenant_with_snapshots(&db, &mut History::new(), 2).await;
    index(&db, &t, 0, first_tree()).await;
    index(&db, &t, 1, second_tree()).await;

    let list = |n: usize, path: &'static str| {
        let db = db.db.clone();
        let (tenant, snapshot) = (t.tenant, t.snapshots[n].0);
        async move {
            let request = ListRequest { snapshot, path: path.into() };
            let mut names = Vec::new();
            let mut page = PageRequest::first(2);
            loop {
                let answer = list_folder(&db, tenant, &request, &page).await.unwrap().expect("the snapshot is indexed");
                names.extend(answer.items.into_iter().map(|e| format!("{} {:?} {}", e.path, e.kind, e.size)));
                match answer.next_cursor {
                    Some(cursor) => page = PageRequest::after(2, cursor),
                    None => return names,
                }
            }
        }
    };
    assert_eq!(list(0, "/").await, ["/home Dir 0"]);
    assert_eq!(list(0, "/home").await, ["/home/ann Dir 0", "/home/bob Dir 0", "/home/link Symlink 0"]);
    assert_eq!(
        list(0, "/home/ann/").await,
        ["/home/ann/a.txt File 10", "/home/ann/b.txt File 20", "/home/ann/report.pdf File 30"]
    );
    assert_eq!(
        list(1, "/home/ann").await,
        ["/home/ann/a.txt File 10", "/home/ann/c.txt File 50", "/home/ann/report.pdf File 31"]
    );
    assert!(list(1, "/nowhere").await.is_empty());
}

async fn tenants_see_only_their_own_files(backend: Backend) {
    let db = test_db(backend).await;
    let mut history = History::new();
    let a = tenant_with_snapshots(&db, &mut history, 1).await;
    let b = tenant_with_snapshots(&db, &mut history, 1).await;
    index(&db, &a, 0, first_tree()).await;
    index(&db, &b, 0, vec![dir("/srv"), file("/srv/b-only", 1, 1)]).await;

    assert_eq!(search_all(&db, a.tenant, "**").await.len(), 8);
    assert!(search_all(&db, b.tenant, "/home/ann/a.txt").await.is_empty(), "B does not see A's file");
    assert!(search_all(&db, a.tenant, "/srv/b-only").await.is_empty(), "A does not see B's file");
    assert!(search_all(&db, TenantId::new(), "**").await.is_empty());
    let as_b = ListRequest { snapshot: a.snapshots[0].0, path: "/home".into() };
    assert!(list_folder(&db, b.tenant, &as_b, &PageRequest::default()).await.unwrap().is_none(), "not found for B");
    assert!(list_folder(&db, a.tenant, &as_b, &PageRequest::default()).await.unwrap().is_some());

    // Over NATS, as the gateway will ask.
    let server = arca_testkit::nats_server();
    let bus = arca_bus::Bus::connect(arca_bus::BusConfig::new(server.url.clone())).await.unwrap();
    let _serving = arca_catalog::api::serve(&bus, db.db.clone(), Arc::new(Default::default())).await.unwrap();
    let ask = |subject: &'static str, query: serde_json::Value| {
        let bus = bus.clone();
        async move { bus.request::<_, serde_json::Value>(subject, &query, None, Duration::from_secs(5)).await }
    };
    let found = ask("arca.q.catalog.files.search", serde_json::json!({"tenant": a.tenant, "path": "/home/ann/a.txt"}))
        .await
        .unwrap();
    assert_eq!(found["items"][0]["snapshots"][0]["id"], serde_json::json!(a.snapshots[0].0), "{found}");
    assert_eq!(found["items"][0]["kind"], "file");
    let hidden = ask("arca.q.catalog.files.search", serde_json::json!({"tenant": b.tenant, "path": "/home/ann/a.txt"}))
        .await
        .unwrap();
    assert_eq!(hidden["items"], serde_json::json!([]));
    let listed = ask(
        "arca.q.catalog.files.list",
        serde_json::json!({"tenant": a.tenant, "snapshot": a.snapshots[0].0, "path": "/home", "limit": 2}),
    )
    .await
    .unwrap();
    assert_eq!(listed["items"][1]["path"], "/home/bob", "{listed}");
    assert!(listed["next_cursor"].is_string());
    let refused = ask(
        "arca.q.catalog.files.list",
        serde_json::json!({"tenant": b.tenant, "snapshot": a.snapshots[0].0, "path": "/home"}),
    )
    .await;
    assert!(matches!(&refused, Err(arca_bus::BusError::Remote { code, .. }) if code == "not_found"), "{refused:?}");
    let bad = ask("arca.q.catalog.files.search", serde_json::json!({"tenant": a.tenant, "path": "/a/["})).await;
    assert!(matches!(&bad, Err(arca_bus::BusError::Remote { code, .. }) if code == "bad_request"), "{bad:?}");
}

async fn indexing_again_changes_nothing(backend: Backend) {
    let db = test_db(backend).await;
    let t = tenant_with_snapshots(&db, &mut History::new(), 2).await;
    index(&db, &t, 0, first_tree()).await;
    index(&db, &t, 1, second_tree()).await;
    let before = dump(&db).await;

    let again = index(&db, &t, 1, second_tree()).await;
    assert!(again.already_indexed);
    assert_eq!((again.ordinal, again.rows_added, again.rows_closed), (2, 0, 0));
    let first_again = index(&db, &t, 0, vec![file("/different", 1, 1)]).await;
    assert!(first_again.already_indexed, "an indexed snapshot is never rewritten");
    assert_eq!(dump(&db).await, before);

    // A path listed twice counts once.
    let t2 = tenant_with_snapshots(&db, &mut History::new(), 1).await;
    let twice = index(&db, &t2, 0, vec![file("/x", 1, 1), file("/x", 1, 1)]).await;
    assert_eq!((twice.entries, twice.rows_added), (1, 1));
}

async fn older_snapshots_are_refused_and_a_series_can_be_rebuilt(backend: Backend) {
    let db = test_db(backend).await;
    let t = tenant_with_snapshots(&db, &mut History::new(), 3).await;
    index(&db, &t, 0, first_tree()).await;
    index(&db, &t, 2, second_tree()).await;
    let (late, time) = t.snapshots[1];
    let refused = index_snapshot(&db, t.tenant, late, &Series::Source(t.source), time, first_tree()).await;
    assert!(
        matches!(refused, Err(CatalogError::SnapshotOutOfOrder { snapshot, newest }) if snapshot == late.as_uuid() && newest == t.snapshots[2].0.as_uuid()),
        "{refused:?}"
    );

    delete_series(&db, t.tenant, &Series::Source(t.source)).await.unwrap();
    assert_eq!(snapshot_files::Entity::find().count(&*db).await.unwrap(), 0);
    for (n, tree) in [first_tree(), first_tree(), second_tree()].into_iter().enumerate() {
        assert_eq!(index(&db, &t, n, tree).await.ordinal, n as i64 + 1);
    }
    assert_eq!(search_all(&db, t.tenant, "/home/ann/b.txt").await[0].snapshots.len(), 2);
}

async fn forgotten_snapshots_leave_the_answers(backend: Backend) {
    let db = test_db(backend).await;
    let mut history = History::new();
    let t = tenant_with_snapshots(&db, &mut history, 3).await;
    index(&db, &t, 0, first_tree()).await;
    index(&db, &t, 1, second_tree()).await;
    index(&db, &t, 2, second_tree()).await;
    let ids: Vec<Uuid> = t.snapshots.iter().map(|(id, _)| id.as_uuid()).collect();

    // The catalog learns that the first snapshot was forgotten: answers leave it out at once.
    let already = history.envelopes.len();
    history.record(t.tenant, t.snapshots[0].0, SnapshotForgotten { job: None });
    let raw = history.raw();
    arca_catalog::Projector::new(db.db.clone()).apply_batch(&raw[already..]).await.unwrap();
    assert!(search_all(&db, t.tenant, "/home/ann/b.txt").await.is_empty(), "only the forgotten snapshot held it");
    let report = search_all(&db, t.tenant, "/home/ann/report.pdf").await;
    assert_eq!(report.iter().map(snapshot_ids).collect::<Vec<_>>(), [vec![ids[1], ids[2]]]);
    let browse = ListRequest { snapshot: t.snapshots[0].0, path: "/home".into() };
    assert!(list_folder(&db, t.tenant, &browse, &PageRequest::default()).await.unwrap().is_none());

    // Forgetting it in the index deletes the versions no remaining snapshot holds.
    let deleted = forget_snapshot(&db, t.tenant, t.snapshots[0].0).await.unwrap();
    assert_eq!(deleted, 2, "b.txt and the first report.pdf");
    assert!(file_rows(&db, "/home/ann/b.txt").await.is_empty());
    assert_eq!(ranges(&file_rows(&db, "/home/ann/a.txt").await), [(1, None)], "still held by the others");
    assert_eq!(forget_snapshot(&db, t.tenant, t.snapshots[0].0).await.unwrap(), 0);
    assert_eq!(forget_snapshot(&db, TenantId::new(), t.snapshots[1].0).await.unwrap(), 0, "another tenant's: nothing");
    // The series goes on from the next ordinal.
    let (_, time) = t.snapshots[2];
    let next = SnapshotId::new();
    let outcome = index_snapshot(&db, t.tenant, next, &Series::Source(t.source), time, second_tree()).await.unwrap();
    assert_eq!((outcome.ordinal, outcome.rows_added), (4, 0));
}
