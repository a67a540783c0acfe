//! The catalog service projects the event log into SQL read models (sea-orm) and
//! answers queries. Not built yet.
