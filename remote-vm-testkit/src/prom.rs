//! The daemon's metrics over HTTP, for the tests: the workspace's one client
//! (remote-vm-prom), re-exported where the tests have always found it.
//!
//! - `get(target, path)`: one-shot `GET` of `HOST:PORT` (or a base URL): (status, body).
//! - `Scrape`: the text exposition format parsed, `Scrape::fetch(HOST:PORT)` for `/metrics`.
pub use remote_vm_prom::{Scrape, get, key, urlencode};
