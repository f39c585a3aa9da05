//! What the retry layer records.

use crate::metrics::{Counter, CounterVec, MetricSet, escape_label, write_family, write_one};

/// How a request through the retry layer ended, the label of
/// `runway_proxy_retry_outcomes_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// The last attempt succeeded.
    Success,
    /// The last attempt failed for good (a client error, an error no rule retries).
    Fail,
    /// Retrying stopped at `max_attempts`.
    MaxAttempts,
    /// Retrying stopped at the deadline.
    Deadline,
    /// Retrying stopped because the retry budget was spent.
    Budget,
    /// The request body was too large to send twice.
    NotReplayable,
    /// A submission that may have reached the upstream got no answer.
    OutcomeUnknown,
    /// The only attempt failed in transport and was not retried.
    TransportError,
    /// The request body could not be read from the client.
    ClientError,
}

impl RetryOutcome {
    const ALL: [RetryOutcome; 9] = [
        RetryOutcome::Success,
        RetryOutcome::Fail,
        RetryOutcome::MaxAttempts,
        RetryOutcome::Deadline,
        RetryOutcome::Budget,
        RetryOutcome::NotReplayable,
        RetryOutcome::OutcomeUnknown,
        RetryOutcome::TransportError,
        RetryOutcome::ClientError,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Success => "success",
            RetryOutcome::Fail => "fail",
            RetryOutcome::MaxAttempts => "max-attempts",
            RetryOutcome::Deadline => "deadline",
            RetryOutcome::Budget => "budget",
            RetryOutcome::NotReplayable => "not-replayable",
            RetryOutcome::OutcomeUnknown => "outcome-unknown",
            RetryOutcome::TransportError => "transport-error",
            RetryOutcome::ClientError => "client-error",
        }
    }
}

/// Metrics of [`Retry`](super::Retry): shared by every service one
/// [`RetryLayer`](super::RetryLayer) makes.
#[derive(Debug, Default)]
pub struct RetryMetrics {
    /// Retries made, by the rule or transport failure that called for them.
    pub retries: CounterVec<String>,
    /// Retries refused because the retry budget was spent.
    pub budget_exhausted: Counter,
    outcomes: [Counter; 9],
}

impl RetryMetrics {
    /// Export every reason a retry can have at 0: the rules that retry and the transport
    /// failures.
    pub fn declare_reasons(&self, rules: &super::Rules) {
        for reason in rules.retrying().chain(crate::upstream::UpstreamError::KINDS) {
            self.retries.declare(reason.to_owned());
        }
    }

    /// Count a request's final outcome.
    pub fn finished(&self, outcome: RetryOutcome) {
        self.outcomes[outcome as usize].inc();
    }

    /// Requests that ended with `outcome` so far.
    pub fn outcomes(&self, outcome: RetryOutcome) -> u64 {
        self.outcomes[outcome as usize].get()
    }
}

impl MetricSet for RetryMetrics {
    fn render(&self, out: &mut String) {
        let retries = self
            .retries
            .snapshot()
            .into_iter()
            .map(|(reason, n)| (escape_label(&reason), n));
        let help = "Retries made, by the rule or failure that called for them.";
        write_family(
            out,
            "runway_proxy_retries_total",
            "counter",
            help,
            "reason",
            retries,
        );
        let help = "Retries refused because the retry budget was spent.";
        let exhausted = self.budget_exhausted.get();
        write_one(
            out,
            "runway_proxy_retry_budget_exhausted_total",
            "counter",
            help,
            exhausted,
        );
        let outcomes = RetryOutcome::ALL.map(|o| (o.as_str(), self.outcomes(o)));
        let help = "Final outcome of requests through the retry layer.";
        write_family(
            out,
            "runway_proxy_retry_outcomes_total",
            "counter",
            help,
            "outcome",
            outcomes,
        );
    }
}
