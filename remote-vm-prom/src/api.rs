//! The Prometheus HTTP API calls remote-vm makes.
use serde_json::Value;

use crate::{Client, Error, Result, urlencode};

/// A Prometheus server's HTTP API (`/api/v1/…`) under a [`Client`]'s base URL.
#[derive(Debug)]
pub struct Prometheus {
    client: Client,
}

impl Prometheus {
    pub fn new(client: Client) -> Prometheus {
        Prometheus { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `GET path_and_query` of the API: the answer's `data` when its `status`
    /// is `success`. `shown` names the request in errors (the query, unencoded).
    pub fn api(&self, path_and_query: &str, shown: &str) -> Result<Value> {
        let url = self.client.url(path_and_query);
        let (status, body) = self.client.get_accepting(path_and_query, Some("application/json"))?;
        let parsed = serde_json::from_str::<Value>(&body);
        match parsed {
            // Success, or the API's own error (which comes with a 4xx/5xx).
            Ok(v) if status == 200 && v["status"] == "success" => Ok(v["data"].clone()),
            Ok(v) if v["status"] == "error" => {
                let reason = match (v["errorType"].as_str(), v["error"].as_str()) {
                    (Some(t), Some(e)) => format!("{t}: {e}"),
                    (None, Some(e)) => e.to_string(),
                    _ => "unknown".to_string(),
                };
                Err(Error::Api {
                    url,
                    query: shown.to_string(),
                    reason: if status == 200 { reason } else { format!("HTTP {status}: {reason}") },
                })
            }
            // Something else answered: a proxy, a login page, a 404.
            _ if status != 200 => Err(Error::Status {
                url,
                status,
                body: crate::snippet(&body),
            }),
            Ok(_) => Err(Error::Json {
                url,
                reason: "no \"status\": \"success\"".to_string(),
            }),
            Err(e) => Err(Error::Json {
                url,
                reason: e.to_string(),
            }),
        }
    }

    /// An instant query, at `time` (Unix seconds) or now: the result vector
    /// (or matrix, for a range selector).
    pub fn query(&self, expr: &str, time: Option<f64>) -> Result<Vec<Value>> {
        let mut path = format!("/api/v1/query?query={}", urlencode(expr));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        let data = self.api(&path, expr)?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of `label` in the series matching any of `matches` (all
    /// series if none): what Grafana's `label_values(SELECTOR, LABEL)` asks.
    pub fn label_values(&self, label: &str, matches: &[&str]) -> Result<Vec<Value>> {
        let mut path = format!("/api/v1/label/{}/values", urlencode(label));
        for (i, m) in matches.iter().enumerate() {
            path.push_str(if i == 0 { "?" } else { "&" });
            path.push_str(&format!("match[]={}", urlencode(m)));
        }
        let shown = format!("label_values({}, {label})", matches.join(" or "));
        let data = self.api(&path, &shown)?;
        Ok(data.as_array().cloned().unwrap_or_default())
    }

    /// The loaded rule groups (`/api/v1/rules`): `{"groups": […]}`.
    pub fn rules(&self) -> Result<Value> {
        self.api("/api/v1/rules", "rules")
    }
}
