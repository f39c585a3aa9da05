//! [`TaskGuardLayer`] and its builder: check the settings, make the guard once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::Layer;

use super::service::{Guard, GuardRules, TaskGuard};
use super::{GuardMetrics, GuardSettings};
use crate::context::OnSubmission;
use crate::limit::WaitBounds;
use crate::settings::setters;
use crate::settings::{InvalidSetting, Live};
use crate::tasks::{TaskStore, Usage};

/// Applies [`TaskGuard`]. Built with [`TaskGuardLayer::builder`].
#[derive(Clone, Debug)]
pub struct TaskGuardLayer {
    shared: Arc<Guard>,
}

impl TaskGuardLayer {
    /// Check `settings` and put them in force now: for new submissions, and for those
    /// waiting for a slot, which try again at once under the new limits (their
    /// `max_wait` still counted from when they arrived). The wait bounds are the rate
    /// limiter's, which the guard's waits share.
    pub fn reload(&self, settings: &GuardSettings, waits: WaitBounds) -> Result<(), InvalidSetting> {
        settings.validate()?;
        self.shared.rules.set(GuardRules::new(settings, waits)?);
        Ok(())
    }

    /// A builder counting tasks in `store` and reporting ended tasks through `usage`
    /// (the watch list's receiver and watcher share it, so a finished task wakes the
    /// submissions waiting for its slot).
    pub fn builder(store: Arc<dyn TaskStore>, usage: Arc<Usage>) -> TaskGuardLayerBuilder {
        TaskGuardLayerBuilder {
            store,
            usage,
            settings: GuardSettings::default(),
            waits: WaitBounds::default(),
            unknown_for: Duration::from_secs(15 * 60),
            body_limit: 1024 * 1024,
        }
    }

    /// The guard's metrics.
    pub fn metrics(&self) -> Arc<GuardMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Each key's use of its per-key budgets over the window, and what frees up when
    /// (`GET /-/budgets`; the gauges are set from the same figures).
    pub async fn budgets(&self) -> Result<super::BudgetReport, crate::store::Error> {
        self.shared.budget_report(true).await
    }

    /// Keep `runway_proxy_guard_budget_used_ratio` up to date: read each key's use of its
    /// budgets from the ledger now, a few seconds after tasks end (their points are billed),
    /// and every 30 s (the window moves on, other replicas' tasks end), until `stopped`.
    pub async fn watch_budgets(&self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(err) = self.shared.refresh_budgets().await {
                tracing::debug!(error = %err, "cannot read the budgets' use");
            }
            let ended = tokio::select! {
                () = tokio::time::sleep(super::budgets::REFRESH_EVERY) => false,
                () = self.shared.usage.notified() => true,
                _ = stopped.wait_for(|s| *s) => return,
            };
            if ended {
                // Tasks ending one after another make one read every few seconds: the
                // read sums the whole window's ledger.
                tokio::time::sleep(super::budgets::AFTER_TASKS_END).await;
            }
        }
    }

    /// Submissions waiting for a task slot now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for TaskGuardLayer {
    type Service = TaskGuard<S>;

    fn layer(&self, inner: S) -> TaskGuard<S> {
        OnSubmission::new(inner, Arc::clone(&self.shared))
    }
}

/// Builds a [`TaskGuardLayer`].
#[derive(Debug)]
pub struct TaskGuardLayerBuilder {
    store: Arc<dyn TaskStore>,
    usage: Arc<Usage>,
    settings: GuardSettings,
    waits: WaitBounds,
    unknown_for: Duration,
    body_limit: usize,
}

impl TaskGuardLayerBuilder {
    setters! {
        /// The limits, budgets and keys.
        settings(settings: GuardSettings) => settings;
        /// How long a submission waits for a task slot, and how many wait at once: the rate
        /// limiter's bounds ([`LimitSettings::wait_bounds`](crate::limit::LimitSettings::wait_bounds);
        /// default its defaults, 30 s and 1024).
        waits(waits: WaitBounds) => waits;
        /// How long a submission whose outcome is unknown counts as in flight (default
        /// 15 min: `watch.recover_after`, after which the watch list gives up on it too).
        unknown_for(wait: Duration) => unknown_for;
        /// Largest submission body read for its `model` (default 1 MiB, the server's body
        /// limit); a larger one is sent on with the model unknown.
        body_limit(bytes: usize) => body_limit;
    }

    /// The layer, once the settings are checked.
    pub fn build(self) -> Result<TaskGuardLayer, InvalidSetting> {
        let rules = GuardRules::new(&self.settings, self.waits)?;
        Ok(TaskGuardLayer {
            shared: Arc::new(Guard {
                store: self.store,
                usage: self.usage,
                rules: Live::new(rules),
                unknown_for: self.unknown_for,
                body_limit: self.body_limit,
                waiting: AtomicUsize::new(0),
                metrics: Arc::default(),
            }),
        })
    }
}
