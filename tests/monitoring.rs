//! What ships for monitoring: the Prometheus alert rules in `deploy/prometheus/` (valid and
//! unit-tested by Prometheus's own `promtool`, which `scripts/test-deps` installs from
//! Debian's `prometheus` package when missing; each with a runbook and a test) and the
//! Grafana dashboard in `deploy/grafana/` (every query valid PromQL). Both name only
//! metrics a live proxy exports.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

/// `promtool`, installed by `scripts/test-deps` when missing (once for all the tests).
fn promtool() -> Command {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        Command::new(repo().join("scripts/test-deps"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("scripts/test-deps runs")
            .success()
    });
    assert!(*installed, "scripts/test-deps failed");
    let mut command = Command::new("promtool");
    command.current_dir(rules_dir());
    command
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The alert names of `alerts.yaml`, each with its rule's text.
fn alerts(rules: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            found.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, text)) = found.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    found
}

#[test]
fn the_rules_are_valid_and_promtool_passes_their_unit_tests() {
    let checked = run(promtool().args(["check", "rules", "alerts.yaml"]));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(promtool().args(["test", "rules", "alerts_test.yaml"]));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_runbook_and_a_test_that_fires_it() {
    let rules = read(&rules_dir().join("alerts.yaml"));
    let tests = read(&rules_dir().join("alerts_test.yaml"));
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 10, "{alerts:?}");
    for (name, rule) in &alerts {
        assert!(rule.contains("runbook: "), "{name} has no runbook annotation");
        assert!(rule.contains("severity: "), "{name} has no severity");
        let fired = tests
            .split(&format!("alertname: {name}\n"))
            .skip(1)
            .any(|after| after.trim_start().starts_with("exp_alerts:\n") && after.contains("- exp_labels:"));
        assert!(fired, "alerts_test.yaml never expects {name} to fire");
    }
}

fn dashboard() -> serde_json::Value {
    let text = read(&repo().join("deploy/grafana/runway-proxy.json"));
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query of the dashboard's panels, with Grafana's variables given values.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*");
            queries.push((title.clone(), expr));
        }
    }
    queries
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 30, "{} queries", queries.len());
    // promtool checks PromQL as recording rules: one rule per query.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (_, expr)) in queries.iter().enumerate() {
        let quoted = serde_json::to_string(expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {quoted}\n"
        ));
    }
    let file = dir.path().join("dashboard.yaml");
    std::fs::write(&file, rules).unwrap();
    let checked = run(promtool().arg("check").arg("rules").arg(&file));
    assert!(
        checked.contains(&format!("{} rules found", queries.len())),
        "{checked}"
    );
}

/// Against a live proxy; with the `otel` feature, whose counters the dashboard's
/// trace-export panel reads.
#[cfg(feature = "otel")]
mod live {
    use std::collections::BTreeSet;

    use super::*;
    use common::*;
    use runway_proxy::mock::MockConfig;

    /// Metric family names in the Prometheus text a proxy exports.
    fn exported(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split_whitespace().next().unwrap_or_default().to_owned();
                for suffix in ["", "_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
        names
    }

    /// Every `runway_proxy_...` name in `text`.
    fn named(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("runway_proxy_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
        names
    }

    #[tokio::test]
    async fn every_metric_the_rules_and_the_dashboard_name_is_one_a_live_proxy_exports() {
        let mock = start_mock(MockConfig::default()).await;
        // A key with a budget (its share is a gauge), and traces exported (to nowhere that
        // answers): their families are on /-/metrics too.
        let file = "[[guard.keys]]\nlabel = \"batch\"\nhash = \"00112233445566778899aabbccddeeff\"\ndaily_point_budget = 100\n";
        let flags = runway_proxy::config::Overrides::from([
            ("listen", "127.0.0.1:0".to_owned()),
            ("otel.endpoint", "http://127.0.0.1:9/v1/traces".to_owned()),
        ]);
        let proxy = start_proxy_with(Some(file), &mock.url(), &flags).await;
        eventually(
            "the budget gauge",
            std::time::Duration::from_secs(10),
            async || {
                metrics_text(&proxy)
                    .await
                    .contains("runway_proxy_guard_budget_used_ratio{")
            },
        )
        .await;
        let exported = exported(&metrics_text(&proxy).await);
        let rules = read(&rules_dir().join("alerts.yaml"));
        let queries: String = dashboard_queries()
            .into_iter()
            .map(|(_, expr)| expr + "\n")
            .collect();
        for (what, text) in [("alerts.yaml", rules), ("runway-proxy.json", queries)] {
            let missing: Vec<String> = named(&text)
                .into_iter()
                .filter(|name| !exported.contains(name))
                .collect();
            assert!(
                missing.is_empty(),
                "{what} names metrics /-/metrics does not export: {missing:?}"
            );
        }
    }
}
