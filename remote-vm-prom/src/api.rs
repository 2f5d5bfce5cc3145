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
        decode(&url, shown, status, &body)
    }

    /// An instant query, at `time` (Unix seconds) or now: the result vector
    /// (or matrix, for a range selector).
    pub fn query(&self, expr: &str, time: Option<f64>) -> Result<Vec<Value>> {
        let mut path = format!("/api/v1/query?query={}", urlencode(expr));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        let url = self.client.url(&path);
        let (status, body) = self.client.get_accepting(&path, Some("application/json"))?;
        query_result(&url, expr, status, &body)
    }

    /// An instant query of counters (see [`crate::counters`]), read as it
    /// streams and within `limits`: its series.
    pub fn query_counters(&self, expr: &str, time: Option<f64>, limits: crate::AnswerLimits) -> Result<Vec<crate::Series>> {
        let mut path = format!("/api/v1/query?query={}", urlencode(expr));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        self.client
            .get_streaming(&path, Some("application/json"), |url, status, body| crate::counters::read_answer(url, expr, status, body, limits))
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
        Ok(into_array(self.api(&path, &shown)?))
    }

    /// The loaded rule groups (`/api/v1/rules`): `{"groups": […]}`.
    pub fn rules(&self) -> Result<Value> {
        self.api("/api/v1/rules", "rules")
    }
}

/// An answer of the API (`status` and `body` of `GET url`) decoded: its `data`
/// when its `status` is `success`, else the error it names (or what answered
/// instead). Pure, so that it can be driven without a server (`fuzz/`).
pub fn decode(url: &str, shown: &str, status: u16, body: &str) -> Result<Value> {
    match serde_json::from_str::<Value>(body) {
        // Success, or the API's own error (which comes with a 4xx/5xx).
        Ok(mut v) if status == 200 && v["status"] == "success" => Ok(v["data"].take()),
        Ok(v) if v["status"] == "error" => {
            // The server's words, on one line and shortened.
            let reason = crate::snippet(&match (v["errorType"].as_str(), v["error"].as_str()) {
                (Some(t), Some(e)) => format!("{t}: {e}"),
                (None, Some(e)) => e.to_string(),
                _ => "unknown".to_string(),
            });
            Err(Error::Api {
                url: url.to_string(),
                query: shown.to_string(),
                reason: if status == 200 { reason } else { format!("HTTP {status}: {reason}") },
            })
        }
        // Something else answered: a proxy, a login page, a 404.
        _ if status != 200 => Err(Error::Status {
            url: url.to_string(),
            status,
            body: crate::snippet(body),
        }),
        Ok(_) => Err(Error::Json {
            url: url.to_string(),
            reason: "no \"status\": \"success\"".to_string(),
        }),
        Err(e) => Err(Error::Json {
            url: url.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The answer to an instant query (`status` and `body` of `GET url`) decoded:
/// its result vector or matrix. Pure, like [`decode`].
pub fn query_result(url: &str, expr: &str, status: u16, body: &str) -> Result<Vec<Value>> {
    let mut data = decode(url, expr, status, body)?;
    Ok(into_array(data["result"].take()))
}

/// A JSON array's elements, taken without copying; anything else is empty.
fn into_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_to_data_or_one_line_errors() {
        let url = "http://p/api/v1/query";
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]}}"#;
        assert_eq!(query_result(url, "up", 200, ok).unwrap().len(), 1);
        let error = |status, body: &str| decode(url, "up", status, body).unwrap_err().to_string();
        assert_eq!(
            error(422, r#"{"status":"error","errorType":"execution","error":"too many\nsamples"}"#),
            "Prometheus query up failed (http://p/api/v1/query): HTTP 422: execution: too many samples"
        );
        let long = error(200, &format!(r#"{{"status":"error","error":"{}"}}"#, "x ".repeat(5000)));
        assert!(long.len() < 400 && !long.contains('\n'), "{long}");
        assert_eq!(
            error(502, "<html>\n<b>Bad gateway</b>\n</html>"),
            "GET http://p/api/v1/query: HTTP 502: <html> <b>Bad gateway</b> </html>"
        );
        assert_eq!(
            error(200, r#"{"status":"pending"}"#),
            r#"GET http://p/api/v1/query: not a Prometheus API answer: no "status": "success""#
        );
    }
}
