//! The one HTTP client of remote-vm: `compare`'s Prometheus queries, the tests'
//! reads of the daemon's `/metrics` and `/healthz`, and xtask's dashboard checks.
//!
//! - [`Client`]: GET over http or https (rustls, server certificates checked
//!   against the system's roots, loaded only when https is first used), IPv6
//!   literal hosts, a connect timeout, a deadline for the whole request, a cap
//!   on the answer's size, optional basic auth or bearer token.
//! - [`Prometheus`]: the HTTP API calls remote-vm makes (instant query, label
//!   values, rules), answering the API's `data` as [`serde_json::Value`]s.
//! - [`Scrape`]: a parser of the text exposition format, enough for tests to
//!   read the daemon's numbers exactly.
mod api;
mod client;
pub mod counters;
mod scrape;

pub use api::{Prometheus, decode, query_result};
pub use client::{Auth, Client, ClientCert, Options, get, without_credentials};
pub use counters::{AnswerLimits, Sample, Series};
pub use scrape::{Scrape, key};

use std::time::Duration;

/// What went wrong, naming the URL (without credentials) where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL is not one this client takes.
    #[error("{url}: {reason} (expected http[s]://HOST[:PORT][/PATH], HOST:PORT or unix:/PATH)")]
    Url { url: String, reason: String },
    /// No connection: the host is unknown, nothing listens, the network is down.
    #[error("GET {url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    /// The connect timeout or the request's deadline passed.
    #[error("GET {url}: timed out ({phase}) after {limit:?}")]
    Timeout {
        url: String,
        /// `connect` or the phase of the request that was running out of time.
        phase: String,
        limit: Duration,
    },
    /// The TLS handshake failed (certificate not trusted, no system roots, …).
    #[error("GET {url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    /// The answer's body is larger than [`Options::max_body`].
    #[error("GET {url}: the answer is larger than the {limit}-byte limit")]
    TooLarge { url: String, limit: u64 },
    /// The exchange broke off or was not HTTP.
    #[error("GET {url}: {reason}")]
    Transfer { url: String, reason: String },
    /// An HTTP status other than 200 where 200 was needed.
    #[error("GET {url}: HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    /// A 200 answer that is not the JSON the Prometheus API gives.
    #[error("GET {url}: not a Prometheus API answer: {reason}")]
    Json { url: String, reason: String },
    /// The Prometheus API said no (`"status": "error"`, or an error status with its JSON).
    #[error("Prometheus query {query} failed ({url}): {reason}")]
    Api { url: String, query: String, reason: String },
    /// An answer past one of [`AnswerLimits`], stopped where it passed it.
    #[error("the answer to {query} ({url}): more than {limit} {unit}")]
    TooMany { url: String, query: String, limit: usize, unit: &'static str },
    /// A line of the text exposition format that does not parse.
    #[error("metrics text: {0}")]
    Exposition(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The start of an answer's body for an error message, on one line.
pub(crate) fn snippet(body: &str) -> String {
    // Only the start is shown: never copy a whole large answer.
    let head = body.char_indices().nth(4096).map_or(body, |(i, _)| &body[..i]);
    let line = head.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986's unreserved
/// characters).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencodes_query_values() {
        assert_eq!(urlencode("up{job=\"a b\"}[5m]"), "up%7Bjob%3D%22a%20b%22%7D%5B5m%5D");
        assert_eq!(urlencode("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(urlencode("é"), "%C3%A9");
    }

    #[test]
    fn snippets_are_one_short_line() {
        assert_eq!(snippet("<html>\n  <p>404</p>\n</html>\n"), "<html> <p>404</p> </html>");
        let long = snippet(&"é".repeat(400));
        assert_eq!(long.chars().count(), 301);
        assert!(long.ends_with('…'));
    }
}
