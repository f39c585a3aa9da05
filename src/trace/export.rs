//! The OTLP/HTTP exporter: a queue the spans drop into and a task that posts them in
//! batches, off the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, header};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Sampler, Sink, SpanData, TraceSettings, Tracer};
use crate::body;
use crate::metrics::{Counter, MetricSet, write_one};
use crate::settings::InvalidSetting;
use crate::upstream::{ClientError, HttpsClient, https_client};

/// Spans waiting to be exported at most; more are dropped (and counted) rather than held
/// up or grown without bound.
const QUEUE: usize = 4096;
/// Spans per export request at most.
const BATCH: usize = 512;
/// How long a span waits for its batch at most (`OTEL_BSP_SCHEDULE_DELAY`'s role).
const DELAY: Duration = Duration::from_millis(500);
/// Time allowed for one export request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the exporter records.
#[derive(Debug, Default)]
pub struct TraceMetrics {
    exported: Counter,
    dropped: Arc<Counter>,
    failed: Counter,
}

impl MetricSet for TraceMetrics {
    fn render(&self, out: &mut String) {
        write_one(
            out,
            "runway_proxy_trace_spans_exported_total",
            "counter",
            "Spans the collector accepted.",
            self.exported.get(),
        );
        write_one(
            out,
            "runway_proxy_trace_spans_dropped_total",
            "counter",
            "Spans dropped because the export queue was full.",
            self.dropped.get(),
        );
        write_one(
            out,
            "runway_proxy_trace_spans_failed_total",
            "counter",
            "Spans lost because the collector did not take them.",
            self.failed.get(),
        );
    }
}

/// The running exporter. [`shutdown`](Self::shutdown) sends what is queued.
#[derive(Debug)]
pub struct OtlpExporter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<TraceMetrics>,
}

impl OtlpExporter {
    /// Start exporting to `settings.endpoint` on the current runtime, and the tracer
    /// whose spans it exports. No endpoint: no exporter, and a tracer that is off.
    pub fn start(settings: &TraceSettings) -> Result<(Tracer, Option<OtlpExporter>), InvalidSetting> {
        settings.validate()?;
        let Some(url) = settings.traces_url() else {
            return Ok((Tracer::off(), None));
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| InvalidSetting::new("otel.endpoint", format!("{url:?} is not a URL")))?;
        let client = https_client(Duration::from_secs(5))
            .map_err(|err: ClientError| InvalidSetting::new("otel.endpoint", err.to_string()))?;
        let metrics = Arc::new(TraceMetrics::default());
        let (queue, spans) = mpsc::channel(QUEUE);
        let (stop, stopped) = watch::channel(false);
        let post = Post {
            client,
            uri,
            headers: settings.headers.clone(),
            service: settings.service_name.clone(),
            metrics: Arc::clone(&metrics),
            failing: AtomicBool::new(false),
        };
        let task = tokio::spawn(post.run(spans, stopped));
        let tracer = Tracer::exporting(
            Sink {
                queue,
                dropped: Arc::clone(&metrics.dropped),
            },
            Sampler::new(settings.sampler, settings.sampler_arg),
        );
        tracing::info!(
            endpoint = %url,
            sampler = settings.sampler.as_str(),
            sampler_arg = %settings.sampler_arg,
            "exporting traces over OTLP/HTTP"
        );
        Ok((tracer, Some(OtlpExporter { stop, task, metrics })))
    }

    /// What it records, for `/-/metrics`.
    pub fn metrics(&self) -> Arc<TraceMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Send what is queued (within a few seconds), then stop.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(TIMEOUT, self.task).await;
    }
}

struct Post {
    client: HttpsClient,
    uri: http::Uri,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    service: String,
    metrics: Arc<TraceMetrics>,
    /// Whether the last export failed: failures are logged once until one succeeds.
    failing: AtomicBool,
}

impl Post {
    async fn run(self, mut spans: mpsc::Receiver<SpanData>, mut stopped: watch::Receiver<bool>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut due = Instant::now() + DELAY;
        loop {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => {
                        if batch.is_empty() {
                            due = Instant::now() + DELAY;
                        }
                        batch.push(span);
                        if batch.len() >= BATCH {
                            self.send(&mut batch).await;
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(due), if !batch.is_empty() => self.send(&mut batch).await,
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        break;
                    }
                }
            }
        }
        while let Ok(span) = spans.try_recv() {
            batch.push(span);
            if batch.len() >= BATCH {
                self.send(&mut batch).await;
            }
        }
        self.send(&mut batch).await;
    }

    async fn send(&self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let payload = super::otlp::export_request(&self.service, batch);
        batch.clear();
        let mut request = Request::post(self.uri.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                header::USER_AGENT,
                concat!("runway-proxy/", env!("CARGO_PKG_VERSION")),
            )
            .body(body::full(payload));
        let request = match request {
            Ok(request) => request,
            Err(err) => return self.failed(count, &err.to_string()),
        };
        match tokio::time::timeout(TIMEOUT, self.client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                self.metrics.exported.add(count);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the trace collector takes spans again");
                }
            }
            Ok(Ok(response)) => self.failed(count, &format!("answered {}", response.status())),
            Ok(Err(err)) => self.failed(count, &body::error_chain(&err)),
            Err(_) => self.failed(count, "timed out"),
        }
    }

    fn failed(&self, count: u64, why: &str) {
        self.metrics.failed.add(count);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(endpoint = %self.uri, error = why, "cannot export spans to the trace collector");
        }
    }
}
