//! Scraping a Prometheus `/metrics` page (edge admin endpoint or control API) and checking it
//! with `promtool check metrics` when promtool is installed.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::http::{self, Request};
use crate::WAIT;

/// One scrape: every sample line as `series → value`, where `series` is the name with its
/// labels exactly as exposed (`roomcast_connections{core="0"}`).
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// Parses the text exposition format (sample lines only).
    pub fn parse(text: String) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
            };
            samples.insert(series.to_owned(), value);
        }
        Scrape { text, samples }
    }

    /// The sum of every sample of metric `name` (any labels), or None when it has none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for (series, value) in &self.samples {
            let metric = series.split('{').next().unwrap_or(series);
            if metric == name {
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }

    /// The sum of metric `name`, panicking when it is absent.
    pub fn total(&self, name: &str) -> f64 {
        self.sum(name)
            .unwrap_or_else(|| panic!("no {name} in the scrape:\n{}", self.text))
    }

    /// The value of one exact series such as `roomcast_capacity_ratio{resource="connections"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// Metric names (the part before `{`, `_bucket`/`_sum`/`_count` kept as exposed).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.samples
            .keys()
            .map(|s| s.split('{').next().unwrap_or(s).to_owned())
            .collect()
    }
}

/// `GET /metrics` on `addr`; asserts a 200 with a text/plain body.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let response = http::send(addr, &Request::new("GET", "/metrics"), WAIT)
        .await
        .unwrap_or_else(|why| panic!("GET http://{addr}/metrics: {why}"));
    assert_eq!(response.status, 200, "GET /metrics: {response:?}");
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "GET /metrics content type {content_type:?}"
    );
    Scrape::parse(response.text())
}

/// Runs `promtool check metrics` on `text` when promtool is on PATH; returns false (after
/// printing a note) when it is not installed. Panics when promtool rejects the page.
pub fn promtool_check(what: &str, text: &str) -> bool {
    assert!(!text.trim().is_empty(), "{what}: empty /metrics page");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "NOTE: promtool is not installed; skipping `promtool check metrics` for {what} \
                 (apt-get install prometheus)"
            );
            return false;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics rejected {what} ({}):\n{}{}\n--- page:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lint.trim().is_empty(),
        "promtool check metrics has lint findings for {what}:\n{lint}"
    );
    true
}
