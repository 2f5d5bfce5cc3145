//! Answers to counter queries (what `compare` asks: raw counter samples,
//! `*_over_time` summaries, counts), parsed as they are read and within
//! limits checked while reading: a Prometheus (or whatever answers in its
//! place) cannot make the client hold more than the limits say, whatever the
//! answer's size or shape.
//!
//! A series keeps its labels and its samples, 16 bytes each: a sample is
//! `[time, "value"]` with a number for the time and a string holding a finite,
//! non-negative number or `NaN` (a staleness marker); anything else is kept as
//! the series' first bad sample, written back as JSON (shortened) for the error
//! that names it. Fields other than the ones read are skipped unread.
use std::{
    cell::Cell,
    collections::BTreeMap,
    fmt,
    io::Read,
};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{Error, Result};

/// The most one answer may hold, checked while it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerLimits {
    pub series: usize,
    pub samples: usize,
    /// Labels of all series together.
    pub labels: usize,
    /// Bytes of label names and values together.
    pub label_bytes: usize,
}

impl AnswerLimits {
    /// Per answer: at most 1,000,000 series, 10,000,000 samples (160 MB),
    /// 4,000,000 labels and 64 MiB of label text. Held, that is under 1 GiB.
    pub const DEFAULT: AnswerLimits = AnswerLimits { series: 1_000_000, samples: 10_000_000, labels: 4_000_000, label_bytes: 64 << 20 };
}

/// One sample: its time in milliseconds, its value (`NaN`: a staleness marker).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub time_ms: i64,
    pub value: f64,
}

impl Sample {
    pub fn is_stale(&self) -> bool {
        self.value.is_nan()
    }
}

/// One series of an answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub metric: BTreeMap<String, String>,
    /// A range query's samples (`None`: the series has no `values`).
    pub values: Option<Vec<Sample>>,
    /// An instant query's value.
    pub value: Option<Sample>,
    /// The first sample that is not `[time, "counter value"]`, as JSON
    /// (shortened to `QUOTED` characters).
    pub bad: Option<String>,
}

impl Series {
    /// The labels as JSON (`{"job":"j",…}`), for errors.
    pub fn metric_json(&self) -> String {
        serde_json::to_string(&self.metric).unwrap_or_default()
    }
}

/// At most this much of a bad sample is kept.
pub const QUOTED: usize = 200;

/// What is left of the limits while an answer is read.
struct Budget {
    series: Cell<usize>,
    samples: Cell<usize>,
    labels: Cell<usize>,
    label_bytes: Cell<usize>,
    /// Which limit ran out (the parse then fails).
    exceeded: Cell<Option<(&'static str, usize)>>,
    limits: AnswerLimits,
}

impl Budget {
    fn take<E: de::Error>(&self, cell: &Cell<usize>, n: usize, unit: &'static str, limit: usize) -> Result<(), E> {
        match cell.get().checked_sub(n) {
            Some(left) => {
                cell.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(Some((unit, limit)));
                Err(E::custom(format!("more than {limit} {unit}")))
            }
        }
    }
}

/// The answer of `GET url` for `expr`: its `status` and body `reader`. A
/// success is read as it streams; anything else (an error status, the API's
/// error) is read up to 64 KiB and named as [`crate::decode`] names it.
pub fn read_answer(url: &str, expr: &str, status: u16, reader: impl Read, limits: AnswerLimits) -> Result<Vec<Series>> {
    if status != 200 {
        let mut body = Vec::new();
        reader.take(64 * 1024).read_to_end(&mut body).map_err(|e| Error::Transfer { url: url.into(), reason: e.to_string() })?;
        crate::decode(url, expr, status, &String::from_utf8_lossy(&body))?;
        return Err(Error::Json { url: url.into(), reason: format!("HTTP {status} with a success answer") });
    }
    let budget = Budget {
        series: Cell::new(limits.series),
        samples: Cell::new(limits.samples),
        labels: Cell::new(limits.labels),
        label_bytes: Cell::new(limits.label_bytes),
        exceeded: Cell::new(None),
        limits,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = TopSeed(&budget).deserialize(&mut de).and_then(|top| de.end().map(|()| top));
    let top = match parsed {
        Ok(top) => top,
        Err(e) => {
            if let Some((unit, limit)) = budget.exceeded.get() {
                return Err(Error::TooMany { url: url.into(), query: expr.into(), limit, unit });
            }
            // The size cap shows as an I/O error of the reader.
            if e.is_io() && e.to_string().contains("limit") {
                return Err(Error::TooLarge { url: url.into(), limit: 0 });
            }
            return Err(Error::Json { url: url.into(), reason: e.to_string() });
        }
    };
    match top.status.as_deref() {
        Some("success") => Ok(top.result),
        Some("error") => Err(Error::Api {
            url: url.into(),
            query: expr.into(),
            reason: crate::snippet(&match (top.error_type, top.error) {
                (Some(t), Some(e)) => format!("{t}: {e}"),
                (None, Some(e)) => e,
                _ => "unknown".to_string(),
            }),
        }),
        _ => Err(Error::Json { url: url.into(), reason: "no \"status\": \"success\"".into() }),
    }
}

#[derive(Default)]
struct Top {
    status: Option<String>,
    error: Option<String>,
    error_type: Option<String>,
    result: Vec<Series>,
}

struct TopSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Top;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Top, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Top;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Prometheus API answer (an object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut top = Top::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "status" => top.status = Some(map.next_value::<String>()?),
                "error" => top.error = map.next_value::<Option<String>>()?,
                "errorType" => top.error_type = map.next_value::<Option<String>>()?,
                "data" => top.result = map.next_value_seed(DataSeed(self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

struct DataSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Vec<Series>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Series>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Vec<Series>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the answer's data (an object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Series>, A::Error> {
        let mut result = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "result" {
                result = map.next_value_seed(ResultSeed(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(result)
    }
    /// `"data": null` (an error answer): no series.
    fn visit_unit<E: de::Error>(self) -> Result<Vec<Series>, E> {
        Ok(Vec::new())
    }
}

struct ResultSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for ResultSeed<'_> {
    type Value = Vec<Series>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Series>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ResultSeed<'_> {
    type Value = Vec<Series>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the answer's result")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Series>, A::Error> {
        let b = self.0;
        let mut out = Vec::new();
        while let Some(s) = seq.next_element_seed(SeriesSeed(b))? {
            b.take(&b.series, 1, "series", b.limits.series)?;
            out.push(s);
        }
        Ok(out)
    }
    /// A scalar or string result (not a vector or matrix): no series.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Series>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Vec::new())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Vec<Series>, E> {
        Ok(Vec::new())
    }
}

struct SeriesSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for SeriesSeed<'_> {
    type Value = Series;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Series, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SeriesSeed<'_> {
    type Value = Series;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a series (an object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Series, A::Error> {
        let b = self.0;
        let mut s = Series::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "metric" => s.metric = map.next_value_seed(LabelsSeed(b))?,
                "values" => {
                    let (values, bad) = map.next_value_seed(SamplesSeed(b))?;
                    s.values = Some(values);
                    if s.bad.is_none() {
                        s.bad = bad;
                    }
                }
                "value" => {
                    b.take(&b.samples, 1, "samples", b.limits.samples)?;
                    match map.next_value_seed(SampleSeed)? {
                        Ok(v) => s.value = Some(v),
                        Err(text) => {
                            if s.bad.is_none() {
                                s.bad = Some(text);
                            }
                        }
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(s)
    }
}

struct LabelsSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for LabelsSeed<'_> {
    type Value = BTreeMap<String, String>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LabelsSeed<'_> {
    type Value = BTreeMap<String, String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("labels (an object of strings)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let b = self.0;
        let mut labels = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let value: String = map.next_value()?;
            b.take(&b.labels, 1, "labels", b.limits.labels)?;
            b.take(&b.label_bytes, name.len() + value.len(), "bytes of labels", b.limits.label_bytes)?;
            labels.insert(name, value);
        }
        Ok(labels)
    }
}

struct SamplesSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for SamplesSeed<'_> {
    type Value = (Vec<Sample>, Option<String>);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SamplesSeed<'_> {
    type Value = (Vec<Sample>, Option<String>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("samples (an array)")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let b = self.0;
        let mut samples = Vec::new();
        let mut bad = None;
        while let Some(sample) = seq.next_element_seed(SampleSeed)? {
            b.take(&b.samples, 1, "samples", b.limits.samples)?;
            match sample {
                Ok(s) => samples.push(s),
                Err(text) => {
                    if bad.is_none() {
                        bad = Some(text);
                    }
                }
            }
        }
        samples.shrink_to_fit();
        Ok((samples, bad))
    }
}

/// One sample: parsed, or its JSON (shortened) when it is not
/// `[time, "counter value"]`.
struct SampleSeed;

impl<'de> DeserializeSeed<'de> for SampleSeed {
    type Value = std::result::Result<Sample, String>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A part of a sample as written: a number (with its JSON text), a string, or
/// something else (shown in short).
enum Part {
    Number(f64, String),
    /// A string (shortened) and the counter value it holds, read from the
    /// whole string.
    Text(String, Option<f64>),
    Other(&'static str),
}

impl Part {
    fn json(&self) -> String {
        match self {
            Part::Number(_, t) => t.clone(),
            Part::Text(s, _) => serde_json::to_string(s).unwrap_or_default(),
            Part::Other(s) => (*s).to_string(),
        }
    }
}

struct PartSeed;

impl<'de> DeserializeSeed<'de> for PartSeed {
    type Value = Part;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Part, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PartSeed {
    type Value = Part;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sample's part")
    }
    fn visit_u64<E>(self, v: u64) -> Result<Part, E> {
        Ok(Part::Number(v as f64, v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Part, E> {
        Ok(Part::Number(v as f64, v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Part, E> {
        Ok(Part::Number(v, serde_json::Number::from_f64(v).map_or_else(|| "null".to_string(), |n| n.to_string())))
    }
    fn visit_str<E>(self, v: &str) -> Result<Part, E> {
        // A counter value is short; a long string is kept in part (for the error).
        let end = v.char_indices().nth(QUOTED).map_or(v.len(), |(i, _)| i);
        Ok(Part::Text(v[..end].to_string(), counter_value(v)))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Part, E> {
        Ok(Part::Other(if v { "true" } else { "false" }))
    }
    fn visit_unit<E>(self) -> Result<Part, E> {
        Ok(Part::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Part, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Part::Other("[…]"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Part::Other("{…}"))
    }
}

/// A time in milliseconds: finite and within ±1e13 s.
fn time_ms(t: f64) -> Option<i64> {
    (t.is_finite() && t.abs() < 1e13).then(|| (t * 1000.0).round() as i64)
}

/// A counter value: finite and not negative, or `NaN` (a staleness marker).
fn counter_value(s: &str) -> Option<f64> {
    if s == "NaN" {
        return Some(f64::NAN);
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

impl<'de> Visitor<'de> for SampleSeed {
    type Value = std::result::Result<Sample, String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sample")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut parts = Vec::new();
        while let Some(p) = seq.next_element_seed(PartSeed)? {
            // Two are a sample; beyond a few, only their number matters.
            if parts.len() < 4 {
                parts.push(p);
            }
        }
        let sample = match parts.as_slice() {
            [Part::Number(t, _), Part::Text(_, v)] => time_ms(*t).zip(*v).map(|(time_ms, value)| Sample { time_ms, value }),
            _ => None,
        };
        Ok(sample.ok_or_else(|| {
            let json = format!("[{}]", parts.iter().map(Part::json).collect::<Vec<_>>().join(","));
            match json.char_indices().nth(QUOTED) {
                Some((i, _)) => format!("{}…", &json[..i]),
                None => json,
            }
        }))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Err(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Err(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Err(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        let end = v.char_indices().nth(QUOTED).map_or(v.len(), |(i, _)| i);
        Ok(Err(Part::Text(v[..end].to_string(), None).json()))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Err(v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err("null".into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err("{…}".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str, limits: AnswerLimits) -> Result<Vec<Series>> {
        read_answer("http://p/api/v1/query", "q", 200, body.as_bytes(), limits)
    }

    #[test]
    fn samples_are_read_into_sixteen_bytes_and_bad_ones_kept_as_written() {
        assert_eq!(std::mem::size_of::<Sample>(), 16);
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"job":"j","instance":"h"},"values":[[1,"2"],[1.5,"NaN"],[2,"3.5"]],"extra":{"a":[1,2]}},
            {"values":[[1,"-1"],[2,"x"]],"metric":{}},
            {"metric":{"a":"b"},"value":[3,"+Inf"]}]},"warnings":["w"]}"#;
        let s = read(body, AnswerLimits::DEFAULT).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].metric_json(), r#"{"instance":"h","job":"j"}"#);
        let v = s[0].values.as_ref().unwrap();
        assert_eq!((v.len(), v[0].time_ms, v[0].value, v[2].value), (3, 1000, 2.0, 3.5));
        assert!(v[1].is_stale() && v[1].time_ms == 1500);
        assert_eq!(s[0].bad, None);
        assert_eq!(s[1].bad.as_deref(), Some(r#"[1,"-1"]"#));
        assert_eq!(s[2].bad.as_deref(), Some(r#"[3,"+Inf"]"#));
        // A long value is judged whole (10,000 nines overflow), shown in part.
        let long = format!(r#"{{"status":"success","data":{{"result":[{{"metric":{{}},"values":[[1,"{}"]]}}]}}}}"#, "9".repeat(10_000));
        assert!(read(&long, AnswerLimits::DEFAULT).unwrap()[0].bad.as_ref().is_some_and(|b| b.ends_with('…') && b.len() < 400));
        for (sample, shown) in [(r#"[1,2]"#, "[1,2]"), (r#"["1","2"]"#, r#"["1","2"]"#), (r#"[1]"#, "[1]"), (r#"[[1,2],"3"]"#, r#"[[…],"3"]"#), ("7", "7")] {
            let body = format!(r#"{{"status":"success","data":{{"result":[{{"metric":{{}},"values":[{sample}]}}]}}}}"#);
            assert_eq!(read(&body, AnswerLimits::DEFAULT).unwrap()[0].bad.as_deref(), Some(shown), "{sample}");
        }
    }

    #[test]
    fn limits_stop_the_read_where_they_are_passed() {
        let many = |n: usize| format!(r#"{{"status":"success","data":{{"result":[{{"metric":{{}},"values":[{}]}}]}}}}"#, vec![r#"[1,"1"]"#; n].join(","));
        let limits = AnswerLimits { series: 2, samples: 5, labels: 3, label_bytes: 16 };
        assert_eq!(read(&many(5), limits).unwrap()[0].values.as_ref().unwrap().len(), 5);
        let e = read(&many(6), limits).unwrap_err();
        assert!(matches!(e, Error::TooMany { limit: 5, unit: "samples", .. }), "{e}");
        let series = r#"{"status":"success","data":{"result":[{"metric":{}},{"metric":{}},{"metric":{}}]}}"#;
        assert!(matches!(read(series, limits).unwrap_err(), Error::TooMany { limit: 2, unit: "series", .. }));
        let labels = r#"{"status":"success","data":{"result":[{"metric":{"a":"1","b":"2","c":"3","d":"4"}}]}}"#;
        assert!(matches!(read(labels, limits).unwrap_err(), Error::TooMany { limit: 3, unit: "labels", .. }));
        let long = r#"{"status":"success","data":{"result":[{"metric":{"a":"0123456789abcdef"}}]}}"#;
        assert!(matches!(read(long, limits).unwrap_err(), Error::TooMany { limit: 16, unit: "bytes of labels", .. }));
    }

    #[test]
    fn what_is_not_a_success_is_named_as_before() {
        let e = |status: u16, body: &str| read_answer("http://p/api/v1/query", "up", status, body.as_bytes(), AnswerLimits::DEFAULT).unwrap_err().to_string();
        assert_eq!(
            e(422, r#"{"status":"error","errorType":"execution","error":"too many\nsamples"}"#),
            "Prometheus query up failed (http://p/api/v1/query): HTTP 422: execution: too many samples"
        );
        assert_eq!(
            e(200, r#"{"status":"error","errorType":"bad_data","error":"no"}"#),
            "Prometheus query up failed (http://p/api/v1/query): bad_data: no"
        );
        assert_eq!(e(200, r#"{"status":"pending"}"#), r#"GET http://p/api/v1/query: not a Prometheus API answer: no "status": "success""#);
        assert!(e(200, r#"{"status":"success","data":{"result":[}"#).starts_with("GET http://p/api/v1/query: not a Prometheus API answer: "));
        assert!(e(200, r#"{"status":"success"} trailing"#).starts_with("GET http://p/api/v1/query: not a Prometheus API answer: trailing"));
        assert_eq!(e(502, "<html>\n<b>Bad gateway</b>\n</html>"), "GET http://p/api/v1/query: HTTP 502: <html> <b>Bad gateway</b> </html>");
    }
}
