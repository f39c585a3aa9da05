//! Archiving in the relay: a succeeded task's webhook waits while its outputs are copied,
//! and goes out pointing at the copies.
//!
//! [`HoldForArchive`] stores such a webhook held back, with an archive job beside it (see
//! [`ArchiveJobs`]). The archive workers claim due jobs with a lease, copy every output
//! at once ([`Archiver::copy`], to keys made from the job so a copy made again lands in
//! the same place), and put the delivery back in line with its body rewritten:
//! links to the copies and `runway_proxy_archive_status: "archived"`; or, when the copy
//! is refused (a host not allowed, an output over the size limit, a source that is gone)
//! or keeps failing, the original URLs and `"failed"` with the reason. At the job's
//! deadline a webhook still held goes out with the original URLs (`"failed"`, copying
//! goes on); a copy that succeeds after that is announced with one more webhook for the
//! task, carrying the links.

mod admin;
mod hold;
mod metrics;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

pub use admin::ArchiveAdmin;
pub(super) use hold::HoldForArchive;
pub use metrics::ArchiveMetrics;

use crate::archive::webhook::{self, Linked, OutputRef};
use crate::archive::{ArchiveError, ArchiveLinks, Archiver, ObjectKey};
use crate::duration::{jittered, unix_millis};
use crate::store::{ArchiveFinish, ArchiveJob, ArchiveJobs, Released};
use crate::tasks::TaskReader;
use crate::trace::{Span, SpanContext, SpanKind, Tracer};

/// The most a shutdown waits for copies in flight.
const COPY_GRACE: Duration = Duration::from_secs(2);
/// How often idle workers look for due jobs without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The waits between attempts at a job whose copies keep failing for a reason that may
/// pass (a 5xx, a reset, a timeout, the store); after the last, it is given up.
const RETRY_WAITS: [Duration; 8] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
];
/// What the subscriber is told when its webhook goes out at the deadline.
const PAST_DEADLINE: &str = "not archived within archive.deadline; copying goes on, and a \
                             later webhook for this task will carry the archived links";

/// What the archive workers need: the copier, the links, the job queue, and how many
/// tasks to copy at once.
#[derive(Clone)]
pub struct Archiving {
    archiver: Archiver,
    links: ArchiveLinks,
    jobs: Arc<dyn ArchiveJobs>,
    deadline: Duration,
    workers: usize,
    timeout: Duration,
    /// Reads a task again for fresh output URLs when the ones it was given expired; set
    /// once the watcher runs.
    refresh: Arc<OnceLock<Arc<dyn TaskReader>>>,
}

impl std::fmt::Debug for Archiving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archiving")
            .field("store", &self.archiver.store().url())
            .field("deadline", &self.deadline)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Archiving {
    /// Copy with `archiver`, link with `links`, keep jobs in `jobs` (the relay's outbox
    /// database); hold a webhook at most `deadline`, copy up to `workers` tasks at once,
    /// each output's copy taking at most `timeout` (the archiver's).
    pub fn new(
        archiver: Archiver,
        links: ArchiveLinks,
        jobs: Arc<dyn ArchiveJobs>,
        deadline: Duration,
        workers: usize,
        timeout: Duration,
    ) -> Archiving {
        Archiving {
            archiver,
            links,
            jobs,
            deadline,
            workers: workers.max(1),
            timeout,
            refresh: Arc::default(),
        }
    }

    /// Where the relay sets how tasks are read again for fresh URLs.
    pub(super) fn refresh_cell(&self) -> Arc<OnceLock<Arc<dyn TaskReader>>> {
        Arc::clone(&self.refresh)
    }

    /// What `/-/tasks/{id}` shows of each task's archive.
    pub fn admin(&self) -> ArchiveAdmin {
        ArchiveAdmin::new(Arc::clone(&self.jobs), self.links.clone())
    }

    /// How long a webhook is held at most.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

/// The running archive workers.
#[derive(Debug)]
pub(super) struct ArchiveWorkers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ArchiveWorkers {
    /// Start claiming jobs. `held` is told of each webhook held; `wake` is the delivery
    /// workers' (told of each delivery put in line).
    pub(super) fn start(
        archiving: Archiving,
        held: Arc<Notify>,
        wake: Arc<Notify>,
        metrics: Arc<ArchiveMetrics>,
        tracer: Tracer,
    ) -> ArchiveWorkers {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let instance: u32 = rand::random();
        tasks.spawn(publish_backlog(
            Arc::clone(&archiving.jobs),
            Arc::clone(&metrics),
            stopped.clone(),
        ));
        let claimer = Claimer {
            name: format!("archiver-{instance:08x}"),
            slots: Arc::new(Semaphore::new(archiving.workers)),
            archiving,
            held,
            wake,
            metrics,
            tracer,
        };
        tasks.spawn(Arc::new(claimer).run(stopped));
        ArchiveWorkers { stop, tasks }
    }

    /// Stop claiming; copies in flight get `grace` (at most [`COPY_GRACE`]), then are
    /// dropped: a copy is made again to the same keys, so waiting out a long one would
    /// only hold up the shutdown. Their jobs are claimed again at once by the next start
    /// on SQLite, after the lease on PostgreSQL.
    pub(super) async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let wait = grace.min(COPY_GRACE);
        let _ = tokio::time::timeout(wait, async { while self.tasks.join_next().await.is_some() {} }).await;
        self.tasks.abort_all();
    }
}

/// Claims jobs while it has free slots, and works each on a task of its own.
struct Claimer {
    name: String,
    archiving: Archiving,
    slots: Arc<Semaphore>,
    held: Arc<Notify>,
    wake: Arc<Notify>,
    metrics: Arc<ArchiveMetrics>,
    tracer: Tracer,
}

impl Claimer {
    async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut running = JoinSet::new();
        // A job's copies take at most the timeout (they run at once); the lease covers
        // that and the bookkeeping around it.
        let lease = self.archiving.timeout + Duration::from_secs(60);
        loop {
            if *stopped.borrow() {
                break;
            }
            let free = self.slots.available_permits();
            if free > 0 {
                match self
                    .archiving
                    .jobs
                    .claim_archive(self.name.clone(), free, lease)
                    .await
                {
                    Ok(jobs) => {
                        for job in jobs {
                            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                                return;
                            };
                            running.spawn(Arc::clone(&self).work(job, slot));
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot claim archive jobs"),
                }
            }
            tokio::select! {
                () = self.held.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                _ = stopped.changed() => break,
            }
            while running.try_join_next().is_some() {}
        }
        // Copies in flight finish, or are dropped when the shutdown's grace runs out.
        while running.join_next().await.is_some() {}
    }

    /// One attempt at `job`: copy its outputs, and record what came of it.
    async fn work(self: Arc<Self>, job: ArchiveJob, _slot: OwnedSemaphorePermit) {
        let mut span = self.tracer.span_to_link("archive outputs", SpanKind::Internal);
        if let Some(submission) = job.trace.as_deref().and_then(SpanContext::from_traceparent) {
            span.link(submission);
        }
        let finish = self.attempt(&job, &mut span).await;
        if let ArchiveFinish::RetryAt { error, .. } | ArchiveFinish::Failed { error, .. } = &finish {
            span.set_error(error.clone());
        }
        match self
            .archiving
            .jobs
            .finish_archive(job.id, self.name.clone(), finish)
            .await
        {
            Ok(Released::Nothing) => {}
            Ok(Released::Held | Released::Announcement) => self.wake.notify_waiters(),
            // The lease runs out and the job is claimed again: copied again to the same keys.
            Err(err) => tracing::warn!(error = %err, job = job.id, "cannot record an archive attempt"),
        }
    }

    async fn attempt(&self, job: &ArchiveJob, span: &mut Span) -> ArchiveFinish {
        let Ok(mut body) = serde_json::from_slice::<Value>(&job.body) else {
            return self.give_up(job, "the webhook is not JSON".into());
        };
        let outputs = webhook::outputs(&body);
        let task_id = body
            .get("task_id")
            .or_else(|| body.get("id"))
            .and_then(Value::as_str)
            .unwrap_or("task")
            .to_owned();
        if span.is_recording() {
            span.set_str("runway.task_id", task_id.clone());
            span.set_int("runway.archive.outputs", outputs.len() as i64);
        }
        let parent = span.context();
        let copies = self.copy_all(job, &task_id, &outputs, parent);
        let copied = if job.holding {
            // The subscriber waits at most until the deadline: past it, its webhook goes
            // out with the original URLs while the copies go on.
            let deadline = deadline_instant(job.deadline_at);
            tokio::pin!(copies);
            tokio::select! {
                copied = &mut copies => copied,
                () = tokio::time::sleep_until(deadline) => {
                    self.let_go(job, &body).await;
                    copies.await
                }
            }
        } else {
            copies.await
        };
        let (outputs, copied) = self.refreshed(job, &task_id, outputs, copied, parent).await;
        let mut linked = Vec::with_capacity(outputs.len());
        let mut errors = Vec::new();
        for (output, copied) in outputs.into_iter().zip(copied) {
            match copied {
                Ok(copy) => match self.archiving.links.link(&copy.key).await {
                    Ok(link) => linked.push(Linked { output, copy, link }),
                    Err(err) => errors.push(err),
                },
                Err(err) => errors.push(err),
            }
        }
        if errors.is_empty() {
            webhook::archived(&mut body, &linked);
            // What the admin API shows: the webhook's entries, with each copy's key (to
            // mint a fresh link from) in place of the link that expires.
            let result = Value::Array(
                linked
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "field": l.output.field.label(),
                            "original": l.output.url,
                            "key": l.copy.key,
                            "bytes": l.copy.bytes,
                            "sha256": l.copy.sha256,
                            "content_type": l.copy.content_type,
                        })
                    })
                    .collect(),
            )
            .to_string();
            tracing::info!(
                task_id,
                outputs = linked.len(),
                job = job.id,
                "task outputs archived"
            );
            return match serde_json::to_vec(&body) {
                Ok(rewritten) => ArchiveFinish::Archived {
                    body: Bytes::from(rewritten),
                    result,
                },
                Err(err) => self.give_up(job, format!("cannot write the webhook: {err}")),
            };
        }
        let reason = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let transient = errors.iter().all(ArchiveError::is_transient);
        match RETRY_WAITS.get(job.attempts as usize) {
            Some(wait) if transient => {
                let mut at = unix_millis() + crate::duration::millis(jittered(*wait));
                if job.holding && !self.past_deadline(job) {
                    // Back by the deadline, to let the webhook go if it is still held.
                    at = at.min(job.deadline_at);
                }
                tracing::warn!(task_id, job = job.id, error = %reason, "archive copy failed; trying again");
                ArchiveFinish::RetryAt { at, error: reason }
            }
            _ => self.give_up(job, reason),
        }
    }

    /// Copy every output of `job` at once.
    async fn copy_all(
        &self,
        job: &ArchiveJob,
        task_id: &str,
        outputs: &[OutputRef],
        parent: Option<SpanContext>,
    ) -> Vec<Result<crate::archive::Archived, ArchiveError>> {
        join_all(outputs.iter().enumerate().map(|(index, output)| {
            let key = ObjectKey::stable(task_id, index, output.extension(), job.created_at, &job.nonce);
            async move { self.copy_one(output, &key, parent).await }
        }))
        .await
    }

    /// Copy one output, counted, in a span of its own under the job's.
    async fn copy_one(
        &self,
        output: &OutputRef,
        key: &ObjectKey,
        parent: Option<SpanContext>,
    ) -> Result<crate::archive::Archived, ArchiveError> {
        let mut span = self.tracer.span("archive copy", SpanKind::Client, parent);
        let started = Instant::now();
        let copied = self.archiving.archiver.copy(&output.url, key).await;
        if span.is_recording() {
            span.set_str("runway.archive.field", output.field.label());
        }
        match &copied {
            Ok(copy) => {
                self.metrics.objects.inc();
                self.metrics.bytes.add(copy.bytes);
                self.metrics.copy_duration.observe(started.elapsed());
                span.set_int(
                    "runway.archive.bytes",
                    i64::try_from(copy.bytes).unwrap_or(i64::MAX),
                );
            }
            Err(err) => {
                self.metrics.failed(err.reason());
                span.set_error(err.to_string());
            }
        }
        copied
    }

    /// Outputs whose source answered 403 or 404 (the URL expired) copied again from the
    /// fresh URLs a read of the task gives, when it can be read.
    async fn refreshed(
        &self,
        job: &ArchiveJob,
        task_id: &str,
        mut outputs: Vec<OutputRef>,
        mut copied: Vec<Result<crate::archive::Archived, ArchiveError>>,
        parent: Option<SpanContext>,
    ) -> (
        Vec<OutputRef>,
        Vec<Result<crate::archive::Archived, ArchiveError>>,
    ) {
        let gone = |c: &Result<_, ArchiveError>| matches!(c, Err(ArchiveError::Gone(_)));
        let Some(reader) = self.archiving.refresh.get().filter(|_| copied.iter().any(gone)) else {
            return (outputs, copied);
        };
        let Some(fresh) = reader
            .current(task_id.to_owned())
            .await
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        else {
            tracing::warn!(
                task_id,
                job = job.id,
                "an output's URL expired and the task could not be read again"
            );
            return (outputs, copied);
        };
        let fresh = webhook::outputs(&fresh);
        let again: Vec<usize> = (0..outputs.len()).filter(|at| gone(&copied[*at])).collect();
        let retried = join_all(again.iter().filter_map(|at| {
            let output = &outputs[*at];
            let renewed = fresh.iter().find(|f| f.field == output.field)?;
            let key = ObjectKey::stable(task_id, *at, output.extension(), job.created_at, &job.nonce);
            Some(async move { (*at, renewed.clone(), self.copy_one(renewed, &key, parent).await) })
        }))
        .await;
        tracing::info!(
            task_id,
            job = job.id,
            renewed = retried.len(),
            "expired output URLs read again from the upstream"
        );
        for (at, renewed, result) in retried {
            outputs[at] = renewed;
            copied[at] = result;
        }
        (outputs, copied)
    }

    fn past_deadline(&self, job: &ArchiveJob) -> bool {
        unix_millis() >= job.deadline_at
    }

    /// The deadline passed with the copies still going: the held webhook goes out now,
    /// with the original URLs, saying so.
    async fn let_go(&self, job: &ArchiveJob, body: &Value) {
        let mut told = body.clone();
        webhook::failed(&mut told, PAST_DEADLINE);
        let Ok(told) = serde_json::to_vec(&told) else {
            return;
        };
        match self
            .archiving
            .jobs
            .release_held(job.id, self.name.clone(), Bytes::from(told))
            .await
        {
            Ok(true) => {
                self.metrics.past_deadline.inc();
                tracing::warn!(
                    job = job.id,
                    "archive deadline passed: the webhook goes out with the original URLs"
                );
                self.wake.notify_waiters();
            }
            Ok(false) => {}
            // Tried again at the next attempt, or by the next worker to claim it.
            Err(err) => tracing::warn!(error = %err, job = job.id, "cannot let a held webhook go"),
        }
    }

    /// Give the job up: the webhook (if still held) goes out with the original URLs and
    /// the reason.
    fn give_up(&self, job: &ArchiveJob, reason: String) -> ArchiveFinish {
        self.metrics.given_up.inc();
        tracing::warn!(job = job.id, error = %reason, "archiving given up: the webhook keeps the original URLs");
        let body = serde_json::from_slice::<Value>(&job.body)
            .ok()
            .and_then(|mut body| {
                webhook::failed(&mut body, &reason);
                serde_json::to_vec(&body).ok()
            })
            .map(Bytes::from)
            .unwrap_or_else(|| job.body.clone());
        ArchiveFinish::Failed { error: reason, body }
    }
}

/// `at` (Unix milliseconds) as a Tokio instant.
fn deadline_instant(at: i64) -> tokio::time::Instant {
    let wait = u64::try_from(at - unix_millis()).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

/// How often the backlog gauges are refreshed from the store.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Keep `runway_proxy_archive_backlog` equal to what the store holds (other replicas'
/// jobs included).
async fn publish_backlog(
    jobs: Arc<dyn ArchiveJobs>,
    metrics: Arc<ArchiveMetrics>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if let Ok(backlog) = jobs.archive_backlog().await {
            metrics.open.set(i64::try_from(backlog.open).unwrap_or(i64::MAX));
            metrics
                .holding
                .set(i64::try_from(backlog.holding).unwrap_or(i64::MAX));
        }
        tokio::select! {
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
            _ = stopped.changed() => return,
        }
    }
}
