//! Black-box tests of the gateway: a private nats-server, an in-process catalog on SQLite and
//! the real gateway on port 0, spoken to over HTTP only. Logs are silent unless `TEST_LOG` is set.

mod api;
mod cache;
mod edge;
mod helpers;
mod isolation;
mod jobs;
mod openapi;
mod replace;
mod schemathesis;
