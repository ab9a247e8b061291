//! Integration tests against the real broker (127.0.0.1:9092) and
//! PostgreSQL (127.0.0.1:5432), started by `scripts/dev-services start`.

mod cli;
mod delivery;
mod harness;
mod ops;
mod poison;
mod reload;
mod security;
mod shipped_routes;
mod shutdown;
