//! The recovery service moves data *out*: restores, downloads, instant recovery over
//! NBD and failover. Not built yet.
