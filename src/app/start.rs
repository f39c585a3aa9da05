//! The steps of [`Proxy::bind`](super::Proxy::bind): the stores, the listeners, the
//! stack (the layer, the relay, the watcher), the metrics, and the secrets in the data
//! directory they need.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tower::Layer;

use super::{Metrics, StartError};
use crate::callback::{Callbacks, Keyring, random_secret};
use crate::config::Config;
use crate::idempotency::IdempotencyStore;
use crate::metrics::MetricSet;
use crate::relay::{Outbox, Relay, SqliteOutbox, WebhookSigner};
use crate::runway::RunwayLayer;
use crate::settings::InvalidSetting;
use crate::sidecar::RequestMetrics;
use crate::tasks::{TaskStore, TaskWatcher, WatchMetrics};
use crate::trace::Tracer;
use crate::upstream::Forward;

/// The outbox and the idempotency records: one store, SQLite in the data directory or
/// the PostgreSQL that replicas share.
pub(super) struct Store {
    pub(super) outbox: Arc<dyn Outbox>,
    pub(super) idempotency: Arc<dyn IdempotencyStore>,
    pub(super) tasks: Arc<dyn TaskStore>,
    #[cfg(feature = "archive")]
    pub(super) archive_jobs: Arc<dyn crate::store::ArchiveJobs>,
    pub(super) described: String,
}

pub(super) async fn open_store(config: &Config) -> Result<Store, StartError> {
    #[cfg(feature = "postgres")]
    if config.database.url.is_some() {
        let store = Arc::new(crate::relay::PostgresOutbox::connect(&config.database).await?);
        return Ok(Store {
            described: store.target().to_owned(),
            outbox: Arc::clone(&store) as Arc<dyn Outbox>,
            idempotency: Arc::clone(&store) as Arc<dyn IdempotencyStore>,
            #[cfg(feature = "archive")]
            #[cfg(feature = "archive")]
            archive_jobs: Arc::clone(&store) as Arc<dyn crate::store::ArchiveJobs>,
            tasks: store,
        });
    }
    let store = Arc::new(SqliteOutbox::open(&config.data_dir.join("outbox.sqlite3"))?);
    Ok(Store {
        described: store.path().display().to_string(),
        outbox: Arc::clone(&store) as Arc<dyn Outbox>,
        idempotency: Arc::clone(&store) as Arc<dyn IdempotencyStore>,
        #[cfg(feature = "archive")]
        archive_jobs: Arc::clone(&store) as Arc<dyn crate::store::ArchiveJobs>,
        tasks: store,
    })
}

/// The proxy's listeners: one per serving thread on one address (`SO_REUSEPORT`), and the
/// webhook listener.
pub(super) struct Listeners {
    pub(super) proxy: Vec<std::net::TcpListener>,
    pub(super) webhook: TcpListener,
}

impl Listeners {
    pub(super) async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let proxy =
            crate::server::bind_shared(config.listen, threads).map_err(|source| StartError::Listen {
                what: "",
                addr: config.listen,
                source,
            })?;
        let addr = config.webhook_listen;
        let webhook = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen {
                what: "for webhooks",
                addr,
                source,
            })?;
        Ok(Listeners { proxy, webhook })
    }

    /// The URL webhooks come back to: `public_url`, else the webhook listener's own.
    pub(super) fn public_url(&self, config: &Config) -> Result<String, StartError> {
        if let Some(url) = &config.public_url {
            return Ok(url.clone());
        }
        let addr: SocketAddr = self.webhook.local_addr().map_err(|source| StartError::Listen {
            what: "for webhooks",
            addr: config.webhook_listen,
            source,
        })?;
        if addr.ip().is_unspecified() {
            tracing::warn!(%addr, "webhook listener on an unspecified address: set --public-url to the URL the upstream can reach");
        }
        Ok(format!("http://{addr}"))
    }
}

/// What serves: the forwarding client, exactly the layer an embedding application uses,
/// the relay, and the watcher that checks tasks through the same layer.
pub(super) struct Stack {
    pub(super) forward: Forward,
    pub(super) runway: RunwayLayer,
    pub(super) relay: Relay,
    pub(super) watcher: TaskWatcher,
    watch_metrics: Arc<WatchMetrics>,
    pub(super) tracer: Tracer,
    #[cfg(feature = "otel")]
    pub(super) exporter: Option<crate::trace::OtlpExporter>,
}

impl Stack {
    pub(super) fn build(
        config: &Config,
        store: &Store,
        callbacks: &Callbacks,
        signer: WebhookSigner,
        #[cfg(feature = "archive")] archiving: Option<crate::relay::Archiving>,
    ) -> Result<Stack, StartError> {
        let forward = Forward::new(&config.upstream, config.connect_timeout, config.request_timeout)?;
        #[cfg(feature = "otel")]
        let (tracer, exporter) = crate::trace::OtlpExporter::start(&config.otel)?;
        #[cfg(not(feature = "otel"))]
        let tracer = Tracer::off();
        if let Some(url) = &config.watch.official_callback_url {
            callbacks
                .policy()
                .check(url)
                .map_err(|refused| InvalidSetting::new("watch.official_callback_url", refused.to_string()))?;
        }
        let runway = RunwayLayer::builder()
            .retry(config.retry.clone())
            .rate_limit(config.limit.clone())
            .callbacks(callbacks.clone())
            // Idempotency records and the watch list live in the outbox's database:
            // durable, one store.
            .idempotency(Arc::clone(&store.idempotency), config.idempotency.clone())
            .watch(Arc::clone(&store.tasks), config.watch.clone())
            .guard(config.guard.clone())
            .tracer(tracer.clone())
            .build()?;
        let relay = Relay::builder(callbacks, Arc::clone(&store.outbox), signer)
            .settings(config.delivery.clone())
            .tracer(tracer.clone())
            .watch_list(
                Arc::clone(&store.tasks),
                config.watch.recover_after,
                runway.usage(),
            );
        #[cfg(feature = "archive")]
        let relay = match archiving {
            Some(archiving) => relay.archive(archiving),
            None => relay,
        };
        let relay = relay.start()?;
        runway.send_events_to(relay.events());
        // The watcher checks tasks through the same stack as the application's calls: its
        // reads wait in the read quota and are retried like theirs.
        let watch_metrics = Arc::new(WatchMetrics::default());
        let watcher = TaskWatcher::start(
            runway.layer(forward.clone()),
            Arc::clone(&store.tasks),
            relay.events(),
            callbacks.keys().clone(),
            config.watch.clone(),
            Arc::clone(&watch_metrics),
            runway.usage(),
        );
        if config.watch.confirm_callbacks {
            relay.confirm_callbacks(watcher.confirmer());
        }
        #[cfg(feature = "archive")]
        relay.refresh_outputs_with(watcher.reader());
        Ok(Stack {
            forward,
            runway,
            relay,
            watcher,
            watch_metrics,
            tracer,
            #[cfg(feature = "otel")]
            exporter,
        })
    }

    /// Every metric set `/-/metrics` renders.
    pub(super) fn metrics(
        &self,
        requests: &Arc<RequestMetrics>,
        reloads: &Arc<super::reload::ReloadMetrics>,
    ) -> Metrics {
        #[cfg(feature = "otel")]
        let trace_metrics = self.exporter.as_ref().map(|e| e.metrics() as Arc<dyn MetricSet>);
        #[cfg(not(feature = "otel"))]
        let trace_metrics: Option<Arc<dyn MetricSet>> = None;
        Metrics {
            sets: vec![
                Arc::clone(requests) as Arc<dyn MetricSet>,
                self.forward.metrics(),
                self.runway.retry().metrics(),
                self.runway.rate_limit().metrics(),
                self.relay.metrics(),
                Arc::clone(&self.watch_metrics) as Arc<dyn MetricSet>,
                self.runway.usage(),
                Arc::clone(reloads) as Arc<dyn MetricSet>,
                Arc::new(crate::metrics::ProcessMetrics::default()),
            ]
            .into_iter()
            .chain(
                self.runway
                    .guard()
                    .map(|guard| guard.metrics() as Arc<dyn MetricSet>),
            )
            .chain(trace_metrics)
            .chain(self.archive_metrics())
            .collect(),
        }
    }
}

impl Stack {
    #[cfg(feature = "archive")]
    fn archive_metrics(&self) -> Option<Arc<dyn MetricSet>> {
        self.relay.archive_metrics().map(|m| m as Arc<dyn MetricSet>)
    }

    #[cfg(not(feature = "archive"))]
    fn archive_metrics(&self) -> Option<Arc<dyn MetricSet>> {
        None
    }
}

pub(super) fn webhook_signer(config: &Config) -> Result<WebhookSigner, StartError> {
    let path = config.data_dir.join("webhook-secret");
    let secret = match &config.webhook_secret {
        // Checked when the config was loaded.
        Some(secret) => {
            tracing::info!("webhook signing secret: from the configuration (webhook_secret)");
            secret.expose().to_owned()
        }
        None => {
            let secret = secret_file(
                &path,
                "webhook signing secret",
                "subscribers verify with it, replicas sign with it",
                WebhookSigner::generate_secret,
            )?;
            // Every start, not just the first: subscribers need to find it.
            tracing::info!(path = %path.display(), "webhook signing secret: give it to your subscribers");
            secret
        }
    };
    WebhookSigner::from_secret(&secret).map_err(|source| StartError::WebhookSecret { path, source })
}

pub(super) fn token_keys(config: &Config) -> Result<Keyring, StartError> {
    let path = config.data_dir.join("callback-token-keys");
    let text = match &config.callback.token_keys {
        Some(keys) => keys.expose().to_owned(),
        None => secret_file(
            &path,
            "callback token key",
            "every replica needs the same one",
            || format!("1:{}", random_secret()),
        )?,
    };
    Keyring::parse(&text).map_err(|source| StartError::TokenKeys { path, source })
}

/// Create the data directory readable by its owner only: it holds secrets and the
/// webhooks' payloads.
pub(super) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Read a secret from `path`, or generate one and store it there (readable by the owner
/// only). The secret itself is never logged, only where it is.
fn secret_file(
    path: &Path,
    what: &str,
    who_needs_it: &str,
    generate: impl FnOnce() -> String,
) -> Result<String, StartError> {
    let fail = |doing: &'static str| {
        let path = path.to_owned();
        move |source| StartError::File {
            what: doing,
            path,
            source,
        }
    };
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(fail("cannot read")(err)),
        Err(_) => {}
    }
    let secret = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(fail("cannot store a generated secret at"))?;
    // No trailing newline: some Standard Webhooks libraries (the JS one) refuse the
    // secret with one when it is read from the file as it is.
    std::io::Write::write_all(&mut file, secret.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail("cannot store a generated secret at"))?;
    tracing::info!(path = %path.display(), "generated a {what} (keep it: {who_needs_it})");
    Ok(secret)
}
