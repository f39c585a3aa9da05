//! What the watch list knows of spend: each task's key, model, points charged and
//! refunded; the reservations the task guard makes before a submission is sent; and the
//! counters of what was paid.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Notify;

use crate::metrics::{CounterVec, MetricSet, escape_label, header};
use crate::store::{Finished, StatusClass, UsageRow};

/// The key hash of an `Authorization` value: the hex of the first 16 bytes of its SHA-256
/// (`printf 'Bearer %s' "$KEY" | sha256sum | cut -c1-32`). The ledger, the watch list and
/// per-key overrides name keys by it; the key itself is never stored in the clear.
pub fn key_hash(authorization: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, authorization);
    // One allocation per submission, and no formatting machinery per byte.
    let mut hex = String::with_capacity(32);
    for byte in &digest.as_ref()[..16] {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

/// Totals over tasks, as `GET /-/usage` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Tasks accepted (or whose outcome is unknown).
    pub tasks: u64,
    /// Of which succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Not finished yet.
    pub unfinished: u64,
    /// Outcome unknown.
    pub unknown: u64,
    /// Points charged, as CometAPI reported them.
    pub points: i64,
    /// Points refunded.
    pub refunded: i64,
    /// `points - refunded`.
    pub net_points: i64,
}

impl Totals {
    /// Add a row's counts.
    pub fn add(&mut self, row: &UsageRow) {
        self.tasks += row.tasks;
        match row.status {
            StatusClass::Succeeded => self.succeeded += row.tasks,
            StatusClass::Failed => self.failed += row.tasks,
            StatusClass::Cancelled => self.cancelled += row.tasks,
            StatusClass::Unfinished => self.unfinished += row.tasks,
            StatusClass::Unknown => self.unknown += row.tasks,
        }
        self.points += row.points;
        self.refunded += row.refunded;
        self.net_points = self.points - self.refunded;
    }
}

/// Totals per key and per model over a set of ledger rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    /// Everything.
    pub total: Totals,
    /// Per key label (or hash).
    pub keys: BTreeMap<String, Totals>,
    /// Per model (`unknown` when the submission named none).
    pub models: BTreeMap<String, Totals>,
}

impl UsageReport {
    /// Sum `rows`.
    pub fn of(rows: &[UsageRow]) -> UsageReport {
        let mut report = UsageReport::default();
        for row in rows {
            report.total.add(row);
            report.keys.entry(row.key.clone()).or_default().add(row);
            let model = row.model.clone().unwrap_or_else(|| "unknown".to_owned());
            report.models.entry(model).or_default().add(row);
        }
        report
    }
}

/// What the guard and the ledger share in one process: the counters of tasks and points
/// by key, and the signal that a task finished (a submission waiting for a slot tries
/// again at once rather than at its next poll).
#[derive(Debug, Default)]
pub struct Usage {
    tasks: CounterVec<(String, StatusClass)>,
    points: CounterVec<(String, &'static str)>,
    freed: Notify,
}

impl Usage {
    /// A new, shared set.
    pub fn new() -> Arc<Usage> {
        Arc::new(Usage::default())
    }

    /// Export `key`'s series at 0 until its first task ends (a labelled key of
    /// `[[guard.keys]]`: the labels are known from the start, hashes are not).
    pub fn declare_key(&self, key: &str) {
        for status in [
            StatusClass::Succeeded,
            StatusClass::Failed,
            StatusClass::Cancelled,
            StatusClass::Unknown,
        ] {
            self.tasks.declare((key.to_owned(), status));
        }
        for kind in ["charged", "refunded"] {
            self.points.declare((key.to_owned(), kind));
        }
    }

    /// A task ended: count it and its points, and wake the waiters.
    pub fn finished(&self, finished: &Finished) {
        self.tasks.inc(&(finished.key.clone(), finished.status));
        let amount = |n: i64| u64::try_from(n).unwrap_or(0);
        if finished.points > 0 {
            self.points
                .add(&(finished.key.clone(), "charged"), amount(finished.points));
        }
        if finished.refunded > 0 {
            self.points
                .add(&(finished.key.clone(), "refunded"), amount(finished.refunded));
        }
        self.freed.notify_waiters();
    }

    /// A submission was accepted with an unknown outcome (counted now: it never finishes).
    pub fn outcome_unknown(&self, key: &str) {
        self.tasks.inc(&(key.to_owned(), StatusClass::Unknown));
    }

    /// A slot may have come free (a reservation was released).
    pub fn freed(&self) {
        self.freed.notify_waiters();
    }

    /// Resolves at the next [`finished`](Self::finished) or [`freed`](Self::freed).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Tasks counted for `key` ending as `status`.
    pub fn tasks(&self, key: &str, status: StatusClass) -> u64 {
        self.tasks.get(&(key.to_owned(), status))
    }
}

impl MetricSet for Usage {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        header(
            out,
            "runway_proxy_ledger_tasks_total",
            "counter",
            "Tasks that ended, by key label (or hash) and how they ended (unknown: the submission's outcome is unknown).",
        );
        for ((key, status), n) in self.tasks.snapshot() {
            let _ = writeln!(
                out,
                "runway_proxy_ledger_tasks_total{{key=\"{}\",status=\"{}\"}} {n}",
                escape_label(&key),
                status.as_str()
            );
        }
        header(
            out,
            "runway_proxy_ledger_points_total",
            "counter",
            "Points of tasks that ended, by key label (or hash): charged, and refunded.",
        );
        for ((key, kind), n) in self.points.snapshot() {
            let _ = writeln!(
                out,
                "runway_proxy_ledger_points_total{{key=\"{}\",kind=\"{kind}\"}} {n}",
                escape_label(&key)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_sums_per_key_and_model() {
        let row = |key: &str, model: Option<&str>, status, tasks, points, refunded| UsageRow {
            key: key.into(),
            model: model.map(Into::into),
            status,
            tasks,
            points,
            refunded,
        };
        let report = UsageReport::of(&[
            row("alice", Some("gen4_turbo"), StatusClass::Succeeded, 2, 640, 0),
            row("alice", Some("gen4_turbo"), StatusClass::Failed, 1, 320, 320),
            row("bob", None, StatusClass::Unfinished, 1, 0, 0),
        ]);
        assert_eq!(report.total.tasks, 4);
        assert_eq!(report.total.net_points, 640);
        assert_eq!(report.keys["alice"].failed, 1);
        assert_eq!(report.keys["alice"].net_points, 640);
        assert_eq!(report.models["unknown"].unfinished, 1);
        // The first 16 bytes of SHA-256, in lower-case hex (what `key-hash` prints).
        assert_eq!(key_hash(b"Bearer sk-test"), "96018835490a18a6e85bc730e198c75c");
    }
}
