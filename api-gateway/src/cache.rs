//! What the gateway keeps so that most requests need no catalog round trip: API keys by hash
//! ([`KeyCache`]) and snapshot pages ([`PageCache`]), both for a few seconds at most and both
//! kept honest by following the event log ([`follow_events`]).
//!
//! - **A revoked key stops working at once.** The gateway that revokes a key marks it revoked
//!   before it answers; every gateway marks a key revoked as soon as its `ApiKeyRevoked` event
//!   arrives, and keeps the mark for an hour, so a catalog that has not applied the revocation
//!   yet cannot bring the key back. Expiry is checked on every request from the cached row.
//! - **A cached page is never older than the events the gateway has seen.** The catalog says
//!   which stream sequence it had applied when it answered (`Arca-Applied`); a page is
//!   served from the cache only while no snapshot event of its tenant with a later sequence
//!   has arrived. While the follower is not following (it failed and is resuming from where it
//!   stopped), no page is served from the cache.
//! - Both are bounded (entries, bytes) and every entry also expires after the configured TTL,
//!   so a missed event costs at most that long.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arca_bus::{Bus, BusError, EVENTS_STREAM};
use arca_events::{AggregateRef, AggregateType, Envelope, Role, TenantId};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

/// An API key as the catalog returns it (the hash never leaves the catalog).
#[derive(Clone, Debug, Deserialize)]
pub struct KeyRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeyRow {
    /// Active and not expired at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.status == "active" && self.expires_at.is_none_or(|t| t > now)
    }
}

/// Keys cached at most; beyond, expired entries go, then everything.
const MAX_KEYS: usize = 10_000;
/// How long a revocation seen on the bus is remembered: far longer than the catalog's lag.
const REVOCATION_MEMORY: Duration = Duration::from_secs(3600);

/// API keys by hash, for `ttl`, with the revocations this gateway has seen.
pub struct KeyCache {
    ttl: Duration,
    inner: std::sync::Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    by_hash: HashMap<String, (KeyRow, Instant)>,
    revoked: HashMap<Uuid, Instant>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, inner: Default::default() }
    }

    /// The key with this hash, if it was fetched less than the TTL before `now`.
    pub fn get(&self, hash: &str, now: Instant) -> Option<KeyRow> {
        let keys = self.inner.lock().expect("the key cache is never poisoned");
        let (row, fetched) = keys.by_hash.get(hash)?;
        (now.saturating_duration_since(*fetched) < self.ttl).then(|| row.clone())
    }

    /// Remembers a row fetched at `now` and returns it, marked revoked when this gateway has
    /// seen the key revoked (the catalog may not have applied that yet).
    pub fn insert(&self, hash: String, mut row: KeyRow, now: Instant) -> KeyRow {
        let mut keys = self.inner.lock().expect("the key cache is never poisoned");
        if keys.revoked.contains_key(&row.id) {
            row.status = "revoked".into();
        }
        if self.ttl.is_zero() {
            return row;
        }
        if keys.by_hash.len() >= MAX_KEYS {
            let ttl = self.ttl;
            keys.by_hash.retain(|_, (_, fetched)| now.saturating_duration_since(*fetched) < ttl);
            if keys.by_hash.len() >= MAX_KEYS {
                keys.by_hash.clear();
            }
        }
        keys.by_hash.insert(hash, (row.clone(), now));
        row
    }

    /// The key `id` is revoked: forget it, and refuse it even if the catalog still says active.
    pub fn revoke(&self, id: Uuid, now: Instant) {
        let mut keys = self.inner.lock().expect("the key cache is never poisoned");
        keys.by_hash.retain(|_, (row, _)| row.id != id);
        keys.revoked.retain(|_, seen| now.saturating_duration_since(*seen) < REVOCATION_MEMORY);
        keys.revoked.insert(id, now);
    }

    /// Forgets every cached key (revocation marks stay): events may have been missed.
    pub fn clear(&self) {
        self.inner.lock().expect("the key cache is never poisoned").by_hash.clear();
    }
}

/// Bytes of pages cached at most; beyond, expired pages go, then everything.
const MAX_PAGE_BYTES: usize = 64 << 20;

/// Catalog pages by tenant and query, each with the catalog position it reflects.
pub struct PageCache {
    ttl: Duration,
    /// Whether the event follower is following; no page is served while it is not.
    following: AtomicBool,
    inner: std::sync::Mutex<Pages>,
}

#[derive(Default)]
struct Pages {
    /// By the catalog query, which names the tenant.
    by_query: HashMap<String, CachedPage>,
    bytes: usize,
    /// The stream sequence of the last snapshot event seen, by tenant.
    changed: HashMap<TenantId, u64>,
}

struct CachedPage {
    tenant: TenantId,
    json: Bytes,
    applied: u64,
    fetched: Instant,
}

impl PageCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, following: AtomicBool::new(false), inner: Default::default() }
    }

    /// The answer to catalog query `query` (whose text names the tenant), if it was fetched
    /// less than the TTL before `now` and no event of the tenant's snapshots has arrived that
    /// it does not reflect.
    pub fn get(&self, query: &str, now: Instant) -> Option<Bytes> {
        if !self.following.load(Ordering::Acquire) {
            return None;
        }
        let pages = self.inner.lock().expect("the page cache is never poisoned");
        let page = pages.by_query.get(query)?;
        let changed = pages.changed.get(&page.tenant).copied().unwrap_or(0);
        (page.applied >= changed && now.saturating_duration_since(page.fetched) < self.ttl).then(|| page.json.clone())
    }

    /// Remembers the page of `tenant` the catalog answered to `query` at position `applied`,
    /// fetched at `now`.
    pub fn insert(&self, tenant: TenantId, query: String, json: Bytes, applied: u64, now: Instant) {
        if self.ttl.is_zero() || json.len() > MAX_PAGE_BYTES / 16 {
            return;
        }
        let mut pages = self.inner.lock().expect("the page cache is never poisoned");
        if pages.bytes + json.len() > MAX_PAGE_BYTES {
            let ttl = self.ttl;
            pages.by_query.retain(|_, page| now.saturating_duration_since(page.fetched) < ttl);
            pages.bytes = pages.by_query.values().map(|page| page.json.len()).sum();
            if pages.bytes + json.len() > MAX_PAGE_BYTES {
                pages.by_query.clear();
                pages.bytes = 0;
            }
        }
        pages.bytes += json.len();
        let replaced = pages.by_query.insert(query, CachedPage { tenant, json, applied, fetched: now });
        if let Some(old) = replaced {
            pages.bytes -= old.json.len();
        }
    }

    /// A snapshot event of `tenant` at stream sequence `sequence` arrived.
    pub fn changed(&self, tenant: TenantId, sequence: u64) {
        let mut pages = self.inner.lock().expect("the page cache is never poisoned");
        let last = pages.changed.entry(tenant).or_default();
        *last = (*last).max(sequence);
    }

    fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::Release);
    }
}

/// Follows the API-key and snapshot events of every tenant from now on (an ordered consumer,
/// resumed just after the last event seen when it fails) and tells the caches. Returns once
/// the consumer exists, so nothing that happens after this returns is missed.
pub async fn follow_events(
    bus: &Bus,
    keys: Arc<KeyCache>,
    pages: Arc<PageCache>,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    // From the log's end now, by sequence, so a resumption knows exactly where to go on.
    let mut last_seen = bus
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?
        .get_info()
        .await
        .map_err(|e| BusError::unavailable("read the EVENTS stream", e))?
        .state
        .last_sequence;
    let mut messages = open(bus, last_seen).await?;
    pages.set_following(true);
    let bus = bus.clone();
    Ok(tokio::spawn(async move {
        loop {
            match messages.next().await {
                Some(Ok(message)) => {
                    let Ok(info) = message.info() else { continue };
                    let sequence = info.stream_sequence;
                    last_seen = sequence;
                    seen(&keys, &pages, &message.subject, &message.payload, sequence);
                }
                failure => {
                    match failure {
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "following key and snapshot events failed; resuming")
                        }
                        _ => tracing::warn!("following key and snapshot events stopped; resuming"),
                    }
                    pages.set_following(false);
                    keys.clear();
                    messages = loop {
                        match open(&bus, last_seen).await {
                            Ok(messages) => break messages,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not follow key and snapshot events; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    };
                    pages.set_following(true);
                }
            }
        }
    }))
}

type Messages = async_nats::jetstream::consumer::pull::Ordered;

/// The key and snapshot events stored after stream sequence `after`.
async fn open(bus: &Bus, after: u64) -> Result<Messages, BusError> {
    let stream = bus
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
    let subjects = [AggregateType::ApiKey, AggregateType::Snapshot]
        .map(|aggregate| format!("{}.*.{}.*", arca_events::EVENT_SUBJECT_PREFIX, aggregate.as_str()));
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subjects: subjects.to_vec(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::unavailable("follow key and snapshot events", e))?;
    consumer.messages().await.map_err(|e| BusError::unavailable("follow key and snapshot events", e))
}

/// One event on a followed subject.
fn seen(keys: &KeyCache, pages: &PageCache, subject: &str, payload: &[u8], sequence: u64) {
    let Some(aggregate) = AggregateRef::from_subject(subject) else { return };
    match aggregate.aggregate {
        AggregateType::Snapshot => pages.changed(aggregate.tenant, sequence),
        AggregateType::ApiKey => match Envelope::from_json(payload) {
            Ok(event) if event.event_type == "ApiKeyRevoked" => keys.revoke(aggregate.id, Instant::now()),
            Ok(_) => {}
            // Unreadable: treat it as the worst it could be.
            Err(_) => keys.revoke(aggregate.id, Instant::now()),
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Uuid, status: &str) -> KeyRow {
        KeyRow { id, tenant_id: Uuid::now_v7(), role: Role::Viewer, status: status.into(), expires_at: None }
    }

    #[test]
    fn keys_are_served_for_the_ttl_and_revoked_ones_stay_revoked() {
        let cache = KeyCache::new(Duration::from_secs(5));
        let start = Instant::now();
        let id = Uuid::now_v7();
        assert!(cache.get("h", start).is_none());
        cache.insert("h".into(), row(id, "active"), start);
        assert_eq!(cache.get("h", start + Duration::from_secs(4)).unwrap().id, id);
        assert!(cache.get("h", start + Duration::from_secs(5)).is_none(), "expired after the TTL");

        cache.insert("h".into(), row(id, "active"), start);
        cache.revoke(id, start);
        assert!(cache.get("h", start).is_none(), "a revoked key is forgotten");
        // A catalog that has not applied the revocation yet still says active: refused anyway.
        let refetched = cache.insert("h".into(), row(id, "active"), start);
        assert_eq!(refetched.status, "revoked");
        assert!(!refetched.is_usable(Utc::now()));
        assert_eq!(cache.get("h", start).unwrap().status, "revoked");
    }

    #[test]
    fn expiry_is_checked_on_the_cached_row() {
        let mut key = row(Uuid::now_v7(), "active");
        let now = Utc::now();
        key.expires_at = Some(now);
        assert!(!key.is_usable(now));
        assert!(key.is_usable(now - chrono::Duration::seconds(1)));
    }

    #[test]
    fn a_page_is_served_until_an_event_of_its_tenant_it_does_not_reflect() {
        let cache = PageCache::new(Duration::from_secs(5));
        cache.set_following(true);
        let (tenant, other) = (TenantId::new(), TenantId::new());
        let start = Instant::now();
        cache.insert(tenant, "q".into(), Bytes::from_static(b"page"), 10, start);
        assert_eq!(cache.get("q", start).unwrap(), "page");
        assert!(cache.get("another query", start).is_none());

        cache.changed(other, 11);
        assert!(cache.get("q", start).is_some(), "another tenant's event changes nothing");
        cache.changed(tenant, 10);
        assert!(cache.get("q", start).is_some(), "an event the page reflects changes nothing");
        cache.changed(tenant, 12);
        assert!(cache.get("q", start).is_none(), "a later event of the tenant");

        // The catalog answered before it applied event 12: still stale.
        cache.insert(tenant, "q".into(), Bytes::from_static(b"old"), 11, start);
        assert!(cache.get("q", start).is_none());
        cache.insert(tenant, "q".into(), Bytes::from_static(b"new"), 12, start);
        assert_eq!(cache.get("q", start).unwrap(), "new");
        assert!(cache.get("q", start + Duration::from_secs(5)).is_none(), "expired after the TTL");

        cache.set_following(false);
        assert!(cache.get("q", start).is_none(), "nothing is served while events are not followed");
    }
}
