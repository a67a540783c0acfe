//! The OpenAPI gateway (actix-web + utoipa): authentication, tenant scoping,
//! commands to events and queries to the catalog. Not built yet.
