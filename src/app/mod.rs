//! The sidecar wired from its configuration: the only place that takes a [`Config`].
//! Available with the `config` feature.
//!
//! [`Proxy::bind`] builds everything `runway-proxy serve` runs, in one direction: the
//! forwarder, [`RunwayLayer`](crate::RunwayLayer) around it (exactly the layer an embedder uses), the relay
//! through [`Relay::builder`] (with the same [`Callbacks`] as the rewrite), the
//! [`Sidecar`] service on top, and both listeners. [`Proxy::run`] serves until shutdown.
//!
//! ```text
//!  main.rs ─► app ─► config
//!              │
//!              ├─► sidecar ──► RunwayLayer (callback ─► retry ─► limit) ──► upstream::Forward
//!              └─► relay (receiver, outbox, workers)   ◄── webhook listener
//! ```
//!
//! # Example
//!
//! ```no_run
//! use runway_proxy::app::Proxy;
//! use runway_proxy::config::Config;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let proxy = Proxy::bind(&Config::default()).await?;
//! println!("listening on {}", proxy.local_addr());
//! proxy.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "archive")]
mod archive;
mod hooks;
mod reload;
mod start;

use hooks::HookRoutes;
pub use reload::{ConfigSource, ReloadError, Reloaded, Reloader, is_live};
use start::{Listeners, Stack, create_private_dir, open_store, token_keys, webhook_signer};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tower::Layer;

use crate::callback::{CallbackError, Callbacks, KeyringError};
use crate::config::{Config, ConfigError, Secret};
use crate::metrics::MetricSet;
use crate::relay::{Outbox, Relay, RelayError, SecretError};
use crate::runway::Runway;
use crate::server::ConnectionLimits;
use crate::settings::InvalidSetting;
use crate::sidecar::{AdminAccess, Console, Readiness, RequestMetrics, Sidecar};
use crate::tasks::TaskWatcher;
use crate::upstream::{ClientError, Forward};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration does not check out.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting is out of range.
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// A file or directory the proxy needs could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What the proxy was doing ("cannot create the data directory", ...).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen {what} on {addr}: {source}")]
    Listen {
        /// Which listener ("", "for webhooks").
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A stored webhook secret is not valid.
    #[error("the webhook secret in {}: {source}", path.display())]
    WebhookSecret {
        /// Where it is kept.
        path: PathBuf,
        /// Why it was refused.
        source: SecretError,
    },
    /// Stored callback token keys are not valid.
    #[error("the callback token keys in {}: {source}", path.display())]
    TokenKeys {
        /// Where they are kept.
        path: PathBuf,
        /// Why they were refused.
        source: KeyringError,
    },
    /// The public URL is not usable.
    #[error("public_url: {0}")]
    PublicUrl(#[from] CallbackError),
    /// The upstream client could not be set up.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The outbox could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The relay could not start.
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// Every metric set the sidecar records (each layer's own), in the order `/-/metrics`
/// renders them.
#[derive(Clone, Debug)]
pub struct Metrics {
    sets: Vec<Arc<dyn MetricSet>>,
}

impl Metrics {
    /// The sets, as [`Sidecar::metric_sets`] takes them.
    pub fn sets(&self) -> Vec<Arc<dyn MetricSet>> {
        self.sets.clone()
    }

    /// Render every set in the Prometheus text format.
    pub fn render(&self) -> String {
        let sets: Vec<&dyn MetricSet> = self.sets.iter().map(|s| s.as_ref()).collect();
        crate::metrics::render_all(&sets)
    }
}

/// The sidecar bound to its listeners, ready to run: the proxy listener (forwarding and
/// admin paths), the webhook listener, and the relay's outbox and delivery workers.
#[derive(Debug)]
pub struct Proxy {
    /// One per serving thread, all on the same address (`SO_REUSEPORT`).
    listeners: Vec<std::net::TcpListener>,
    webhook_listener: TcpListener,
    service: Sidecar<Runway<Forward>>,
    hooks: HookRoutes,
    /// The archive's store and retention, for the sweep.
    #[cfg(feature = "archive")]
    retention: Option<(crate::archive::ArchiveStore, Duration)>,
    relay: Relay,
    metrics: Metrics,
    /// The web console's ring of samples, taken while the proxy runs.
    console: Console,
    readiness: Readiness,
    outbox: Arc<dyn Outbox>,
    watcher: TaskWatcher,
    grace: Duration,
    connections: ConnectionLimits,
    reloader: Reloader,
    reload_asks: tokio::sync::mpsc::Receiver<reload::Ask>,
    applier: reload::Applier,
    /// Sends the spans still queued at shutdown.
    #[cfg(feature = "otel")]
    exporter: Option<crate::trace::OtlpExporter>,
}

impl Proxy {
    /// Build everything `serve` runs from `config`, and bind both listeners.
    pub async fn bind(config: &Config) -> Result<Proxy, StartError> {
        config.validate()?;
        create_private_dir(&config.data_dir).map_err(|source| StartError::File {
            what: "cannot create the data directory",
            path: config.data_dir.clone(),
            source,
        })?;
        let signer = webhook_signer(config)?;
        let keys = token_keys(config)?;
        let store = open_store(config).await?;
        let listeners = Listeners::bind(config).await?;
        let public_url = listeners.public_url(config)?;
        // One value for the rewrite and the relay: the same keys, policy and body limit.
        let callbacks = Callbacks::new(&public_url, keys)?
            .with_policy(config.callback.policy())
            .with_body_limit(config.callback.body_limit)
            .with_webhook_body_limit(config.callback.webhook_body_limit)
            .with_token_lifetime(config.callback.token_lifetime);
        #[cfg(feature = "archive")]
        let archive = archive::Archive::open(
            &config.archive,
            Arc::clone(&store.archive_jobs),
            &callbacks,
            &public_url,
        )?;
        #[cfg(not(feature = "archive"))]
        if config.archive.url.is_some() {
            return Err(StartError::Setting(InvalidSetting::new(
                "archive.url",
                "this build has no archive (built without the `archive` feature)".to_owned(),
            )));
        }
        // Webhooks an earlier run held for the archive, now off, go out as they came.
        #[cfg(feature = "archive")]
        if archive.is_none() {
            let reason = "the archive was turned off (archive.url unset)".to_owned();
            match store.archive_jobs.release_all_held(reason).await {
                Ok(0) => {}
                Ok(released) => tracing::warn!(
                    released,
                    "archive off: webhooks held for it are delivered without copies"
                ),
                Err(err) => tracing::warn!(error = %err, "cannot let go of webhooks held for the archive"),
            }
        }
        #[cfg(feature = "archive")]
        let (archiving, outputs, retention, archive_admin) = match archive {
            Some(archive) => {
                let retention = archive.retention();
                let admin: Arc<dyn crate::relay::TaskArchive> = Arc::new(archive.archiving.admin());
                (
                    Some(archive.archiving),
                    archive.server,
                    Some(retention),
                    Some(admin),
                )
            }
            None => (None, None, None, None),
        };
        let stack = Stack::build(
            config,
            &store,
            &callbacks,
            signer,
            #[cfg(feature = "archive")]
            archiving,
        )?;
        let requests = Arc::new(RequestMetrics::default());
        let reload_metrics = Arc::new(reload::ReloadMetrics::default());
        let metrics = stack.metrics(&requests, &reload_metrics);
        let readiness = Readiness::default();
        let access = AdminAccess::new(config.admin_token.as_ref().map(Secret::expose), config.listen);
        if access.relay_locked() {
            tracing::warn!(
                listen = %config.listen,
                "the proxy listener is not loopback and no admin token is set: /-/deliveries and replays are \
                 refused (set --admin-token to use them)"
            );
        }
        let (reloader, reload_asks) = reload::channel();
        let applier = reload::Applier {
            current: config.clone(),
            retry: stack.runway.retry().clone(),
            limit: stack.runway.rate_limit().clone(),
            guard: stack.runway.guard().cloned(),
            callbacks: callbacks.clone(),
            access: access.clone(),
            tracer: stack.tracer.clone(),
            metrics: reload_metrics,
        };
        let console = Console::new(metrics.sets().into());
        let service = Sidecar::new(stack.runway.layer(stack.forward), requests, readiness.clone())
            .metric_sets(metrics.sets())
            .relay_admin(stack.relay.admin())
            .task_admin(Arc::clone(&store.tasks))
            .console(console.clone());
        let service = match stack.runway.guard() {
            Some(guard) => service.budget_admin(guard.clone()),
            None => service,
        };
        #[cfg(feature = "archive")]
        let service = match archive_admin {
            Some(admin) => service.archive_admin(admin),
            None => service,
        };
        let service = service
            .admin_access(access)
            .config_reload(Arc::new(reloader.clone()))
            .tracer(stack.tracer)
            .access_log(config.access_log);
        tracing::info!(public_url = %public_url, outbox = %store.described, "webhook relay ready");
        Ok(Proxy {
            listeners: listeners.proxy,
            webhook_listener: listeners.webhook,
            service,
            hooks: HookRoutes {
                receiver: stack.relay.receiver(),
                #[cfg(feature = "archive")]
                outputs,
            },
            #[cfg(feature = "archive")]
            retention,
            relay: stack.relay,
            metrics,
            console,
            readiness,
            outbox: store.outbox,
            watcher: stack.watcher,
            grace: config.shutdown_grace,
            connections: config.connections,
            reloader,
            reload_asks,
            applier,
            #[cfg(feature = "otel")]
            exporter: stack.exporter,
        })
    }

    /// The handle that reloads this proxy's configuration while it runs (see
    /// [`Reloader`]); it answers once [`run`](Self::run) has started.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Read the configuration from `source` again at each reload (SIGHUP,
    /// `POST /-/reload`, [`Reloader::reload`]); without one, only
    /// [`Reloader::apply`] can change it.
    pub fn reload_from(&self, source: ConfigSource) {
        self.reloader.set_source(source);
    }

    /// Everything the running proxy records, as `/-/metrics` shows it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The address the proxy listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners
            .first()
            .and_then(|listener| listener.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The address the webhook listener listens on.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serve until `shutdown` completes, then drain in-flight requests for up to the
    /// configured grace period, and let the delivery workers finish or hand back what
    /// they hold.
    ///
    /// The proxy listener is served thread per core: each serving thread runs a
    /// current-thread runtime with its own listener and upstream pool, so a request is
    /// accepted, handled and forwarded on one thread with no hand-off between threads.
    /// The shared state (limits, retry budget, metrics, outbox) is shared by `Arc`. The
    /// webhook listener and the delivery workers run on the caller's runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.readiness.set(true);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let (grace, limits) = (self.grace, self.connections);
        let mut serving = Vec::with_capacity(self.listeners.len());
        for (index, listener) in self.listeners.into_iter().enumerate() {
            let service = self.service.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("runway-proxy-serve-{index}"))
                .spawn(move || serve_thread(index, listener, service, signal(stopped), grace, limits));
            match thread {
                Ok(thread) => serving.push(thread),
                Err(err) => tracing::error!(error = %err, index, "cannot start a serving thread"),
            }
        }
        let probe = watch_store(self.outbox, self.readiness.clone(), stopped.clone());
        let hooks = crate::server::serve(
            self.webhook_listener,
            self.hooks,
            signal(stopped.clone()),
            grace,
            limits,
        );
        #[cfg(feature = "archive")]
        let sweep = {
            let metrics = self.relay.archive_metrics();
            let stopped = stopped.clone();
            async move {
                if let Some((store, retention)) = self.retention {
                    archive::Archive::sweep(store, retention, metrics, stopped).await;
                }
            }
        };
        #[cfg(not(feature = "archive"))]
        let sweep = async {};
        let readiness = self.readiness.clone();
        let trigger = async move {
            shutdown.await;
            readiness.set(false);
            let _ = stop.send(true);
        };
        let relay = self.relay;
        let guard = self.applier.guard.clone();
        let budgets = {
            let stopped = stopped.clone();
            async move {
                if let Some(guard) = guard {
                    guard.watch_budgets(stopped).await;
                }
            }
        };
        let samples = {
            let (console, stopped) = (self.console.clone(), stopped.clone());
            async move { console.sample(stopped).await }
        };
        let reloads = self
            .applier
            .serve(self.reload_asks, self.reloader, &relay, stopped);
        tokio::join!(hooks, trigger, probe, reloads, sweep, budgets, samples);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in serving {
                let _ = thread.join();
            }
        })
        .await;
        self.watcher.shutdown().await;
        relay.shutdown(self.grace).await;
        #[cfg(feature = "otel")]
        if let Some(exporter) = self.exporter {
            exporter.shutdown().await;
        }
    }
}

/// How often readiness asks the outbox whether it answers.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Keep readiness in step with the outbox: a replica whose store does not answer says it
/// is not ready (its webhook listener answers 503 meanwhile), and is ready again when the
/// store is back.
async fn watch_store(
    outbox: Arc<dyn Outbox>,
    readiness: Readiness,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut available = true;
    loop {
        let now = outbox.ping().await;
        match (&now, available) {
            (Err(err), true) => tracing::error!(error = %err, "the outbox does not answer: not ready"),
            (Ok(()), false) => tracing::info!("the outbox answers again: ready"),
            _ => {}
        }
        available = now.is_ok();
        readiness.set_store_available(available);
        tokio::select! {
            () = tokio::time::sleep(STORE_PROBE_EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// One serving thread: its own current-thread runtime, serving `listener` until `stop`.
fn serve_thread(
    index: usize,
    listener: std::net::TcpListener,
    service: Sidecar<Runway<Forward>>,
    stop: impl Future<Output = ()>,
    grace: Duration,
    limits: ConnectionLimits,
) {
    crate::upstream::serve_on_this_thread(index);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, index, "cannot start a serving thread's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => crate::server::serve(listener, service, stop, grace, limits).await,
            Err(err) => tracing::error!(error = %err, index, "cannot serve on a listener"),
        }
    });
}
