//! Black-box tests of the `arca` command: every scenario runs against a filesystem
//! repository, a real S3-compatible server and Azurite.

mod helpers;

mod api_client;
mod backup;
mod catalog;
mod check;
mod copy;
mod crash;
mod deps;
mod folders;
mod gc;
mod instant;
mod keys;
mod platform;
mod postgres;
mod prune;
mod repair;
mod replication;
mod restore;
mod server;
mod tracing;
