//! The console's charts: a ring of samples of the proxy's own metrics, one every
//! [`SAMPLE_EVERY`] for the last hour, read from the text `/-/metrics` serves (the same
//! renderer, so a chart never disagrees with a scrape).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::duration::unix_millis;
use crate::metrics::MetricSet;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How many samples are kept: an hour's.
const KEPT: usize = 360;

/// Where one series of a chart comes from: a metric family, split by a label (or not).
struct Source {
    /// The sample name in the text format (`_total`, `_sum` included).
    metric: &'static str,
    /// The label whose values name the series (`None`: one series, `name`).
    by: Option<&'static str>,
    /// The series' name, or its prefix before the label's value.
    name: &'static str,
    /// Only these label values (empty: all).
    only: &'static [&'static str],
    /// Name an HTTP status by its class (`2xx`) rather than itself.
    status_class: bool,
}

/// One small chart of the overview.
struct Chart {
    id: &'static str,
    title: &'static str,
    /// Per second over each interval (a counter), or the value sampled (a gauge).
    rate: bool,
    unit: &'static str,
    sources: &'static [Source],
}

const fn source(metric: &'static str, name: &'static str) -> Source {
    Source {
        metric,
        by: None,
        name,
        only: &[],
        status_class: false,
    }
}

const fn split(metric: &'static str, by: &'static str, name: &'static str) -> Source {
    Source {
        metric,
        by: Some(by),
        name,
        only: &[],
        status_class: false,
    }
}

/// The overview's charts, in the order shown.
const CHARTS: &[Chart] = &[
    Chart {
        id: "requests",
        title: "Requests by route class and outcome",
        rate: true,
        unit: "req/s",
        sources: &[Source {
            status_class: true,
            ..split("runway_proxy_requests_total", "route_class", "")
        }],
    },
    Chart {
        id: "retries",
        title: "Retries by reason",
        rate: true,
        unit: "retries/s",
        sources: &[split("runway_proxy_retries_total", "reason", "")],
    },
    Chart {
        id: "waits",
        title: "Rate-limit waits and refusals",
        rate: true,
        unit: "per s",
        sources: &[
            // Seconds waited per second: how many requests waited, on average.
            source("runway_proxy_limit_wait_seconds_sum", "waiting (average)"),
            split("runway_proxy_limit_refusals_total", "reason", "refused: "),
            split("runway_proxy_guard_refusals_total", "reason", "guard refused: "),
        ],
    },
    Chart {
        id: "tasks",
        title: "Tasks in flight",
        rate: false,
        unit: "tasks",
        sources: &[Source {
            only: &["pending", "watching", "unknown"],
            ..split("runway_proxy_tasks", "state", "")
        }],
    },
    Chart {
        id: "webhooks",
        title: "Webhooks received, delivered and dead",
        rate: true,
        unit: "per s",
        sources: &[
            source("runway_proxy_webhooks_received_total", "received"),
            Source {
                only: &["delivered", "dead"],
                ..split("runway_proxy_deliveries_total", "result", "")
            },
        ],
    },
];

/// One sample: each chart's series values, as read.
struct Sample {
    at: i64,
    /// (chart index, series name) → value.
    values: BTreeMap<(usize, String), f64>,
}

/// The ring of samples, and what it samples.
pub struct Samples {
    sets: Arc<[Arc<dyn MetricSet>]>,
    ring: Mutex<VecDeque<Sample>>,
    started_at: i64,
}

impl std::fmt::Debug for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Samples")
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

impl Samples {
    /// A ring sampling `sets` (those `/-/metrics` renders).
    pub fn new(sets: Arc<[Arc<dyn MetricSet>]>) -> Self {
        Samples {
            sets,
            ring: Mutex::new(VecDeque::with_capacity(KEPT)),
            started_at: unix_millis(),
        }
    }

    /// Take a sample now, and forget the oldest past an hour's.
    pub fn take(&self) {
        let sample = self.read();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Read the metrics into one sample.
    fn read(&self) -> Sample {
        let mut text = String::with_capacity(16 * 1024);
        for set in self.sets.iter() {
            set.render(&mut text);
        }
        let mut values = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = parse_line(line) else {
                continue;
            };
            for (index, chart) in CHARTS.iter().enumerate() {
                for source in chart.sources.iter().filter(|s| s.metric == name) {
                    if let Some(series) = series_name(source, &labels) {
                        *values.entry((index, series)).or_insert(0.0) += value;
                    }
                }
            }
        }
        Sample {
            at: unix_millis(),
            values,
        }
    }

    /// The charts over the kept samples and one taken now: for each chart its series, one
    /// value per interval (a rate for counters; `null` where a series had no sample).
    pub fn report(&self) -> Value {
        let now = self.read();
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // The sample taken now shows the last seconds, unless they are too few to make a
        // rate of (a page loaded just after a sample would end every chart on noise).
        let fresh = ring
            .back()
            .is_none_or(|last| now.at - last.at >= crate::duration::millis(SAMPLE_EVERY) / 2);
        let live = (ring.len() < 2 || fresh).then_some(&now);
        let samples: Vec<&Sample> = ring.iter().chain(live).collect();
        let charts: Vec<Value> = CHARTS
            .iter()
            .enumerate()
            .map(|(index, chart)| chart_report(index, chart, &samples))
            .collect();
        // Each value stands for the interval ending at its time: counters' first sample
        // has no interval before it.
        let at: Vec<i64> = samples.iter().map(|s| s.at).collect();
        json!({
            "interval_s": SAMPLE_EVERY.as_secs(),
            "now": now.at,
            "started_at": self.started_at,
            "uptime_s": (now.at - self.started_at) / 1000,
            "version": env!("CARGO_PKG_VERSION"),
            "at": at,
            "charts": charts,
        })
    }
}

fn chart_report(index: usize, chart: &Chart, samples: &[&Sample]) -> Value {
    let mut names: Vec<&String> = samples
        .iter()
        .flat_map(|s| s.values.keys())
        .filter(|(i, _)| *i == index)
        .map(|(_, name)| name)
        .collect();
    names.sort();
    names.dedup();
    let series: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let key = (index, name.clone());
            let values: Vec<Option<f64>> = samples
                .iter()
                .enumerate()
                .map(|(i, sample)| {
                    let value = *sample.values.get(&key)?;
                    if !chart.rate {
                        return Some(value);
                    }
                    let before = samples.get(i.checked_sub(1)?)?;
                    let seconds = (sample.at - before.at) as f64 / 1000.0;
                    let previous = before.values.get(&key).copied().unwrap_or(0.0);
                    (seconds > 0.0).then(|| ((value - previous) / seconds).max(0.0))
                })
                .collect();
            json!({ "name": name, "values": values })
        })
        .collect();
    json!({
        "id": chart.id,
        "title": chart.title,
        "unit": chart.unit,
        "series": series,
    })
}

/// The series a sample with `labels` counts in, if `source` takes it.
fn series_name(source: &Source, labels: &Labels) -> Option<String> {
    let Some(by) = source.by else {
        return Some(source.name.to_owned());
    };
    let value = labels.iter().find(|(k, _)| k == by).map(|(_, v)| v.as_str())?;
    if !source.only.is_empty() && !source.only.contains(&value) {
        return None;
    }
    let mut name = format!("{}{value}", source.name);
    if source.status_class {
        let status = labels.iter().find(|(k, _)| k == "status")?;
        let class = status.1.chars().next()?;
        name.push_str(&format!(" {class}xx"));
    }
    Some(name)
}

/// A sample's labels, as written.
type Labels = Vec<(String, String)>;

/// A sample line of the text format: its name, labels and value.
fn parse_line(line: &str) -> Option<(&str, Labels, f64)> {
    let (head, value) = line.trim_end().rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, Vec::new(), value));
    };
    let body = rest.strip_suffix('}')?;
    Some((name, parse_labels(body)?, value))
}

/// `key="value",...`, with the format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(body: &str) -> Option<Labels> {
    let mut labels = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (at, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break at,
                other => value.push(other),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(&'static str);

    impl MetricSet for Fixed {
        fn render(&self, out: &mut String) {
            out.push_str(self.0);
        }
    }

    #[test]
    fn lines_and_labels_parse_with_escapes() {
        let (name, labels, value) =
            parse_line(r#"runway_proxy_retries_total{reason="code \"500\"",x="a\\b"} 3"#).unwrap();
        assert_eq!(name, "runway_proxy_retries_total");
        assert_eq!(value, 3.0);
        assert_eq!(
            labels,
            vec![
                ("reason".into(), "code \"500\"".into()),
                ("x".into(), "a\\b".into())
            ]
        );
        assert_eq!(parse_line("process_open_fds 12").unwrap().2, 12.0);
        assert!(parse_line(r#"broken{reason="x} 1"#).is_none());
    }

    #[test]
    fn series_are_summed_by_label_and_counters_become_rates() {
        let text = "runway_proxy_requests_total{route_class=\"submission\",status=\"200\"} 10\n\
                    runway_proxy_requests_total{route_class=\"submission\",status=\"201\"} 5\n\
                    runway_proxy_requests_total{route_class=\"read\",status=\"503\"} 1\n\
                    runway_proxy_tasks{state=\"watching\"} 4\n\
                    runway_proxy_tasks{state=\"done\"} 90\n";
        let samples = Samples::new(Arc::new([Arc::new(Fixed(text)) as Arc<dyn MetricSet>]));
        samples.take();
        let first = samples.read();
        assert_eq!(first.values.get(&(0, "submission 2xx".into())), Some(&15.0));
        assert_eq!(first.values.get(&(0, "read 5xx".into())), Some(&1.0));
        assert_eq!(first.values.get(&(3, "watching".into())), Some(&4.0));
        assert!(
            !first.values.contains_key(&(3, "done".into())),
            "done tasks are not in flight"
        );
        std::thread::sleep(Duration::from_millis(3));
        let report = samples.report();
        let requests = &report["charts"][0]["series"];
        let submissions = requests
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "submission 2xx")
            .unwrap();
        assert_eq!(
            submissions["values"][0],
            Value::Null,
            "no interval before the first"
        );
        assert_eq!(submissions["values"][1], 0.0, "nothing new since");
        assert_eq!(report["charts"][3]["series"][0]["values"][1], 4.0);
    }
}
