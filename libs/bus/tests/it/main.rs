//! The event store, work queue, queries and secrets against a real nats-server.

mod follow;
mod infra;
mod jobs;
mod query;
mod secrets;
mod store;

use arca_bus::{Bus, BusConfig, EventStore};
use arca_testkit::NatsServer;

/// A private nats-server and an event store on it.
pub struct Harness {
    pub server: NatsServer,
    pub bus: Bus,
    pub store: EventStore,
}

pub async fn harness() -> Harness {
    let server = arca_testkit::nats_server();
    let bus = Bus::connect(BusConfig::new(server.url.clone())).await.expect("connect");
    let store = bus.event_store().await.expect("event store");
    Harness { server, bus, store }
}
