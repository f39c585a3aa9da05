//! `runway-proxy`: the sidecar (`serve`) and the CometAPI stand-in (`mock-upstream`).
#![forbid(unsafe_code)]

mod demo;

/// See the `mimalloc` feature in Cargo.toml: measured in BENCHMARKS.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use runway_proxy::app::{ConfigSource, Proxy, Reloader};
use runway_proxy::config::{Config, HEADINGS, Heading, KEYS, LogFormat, Origin, Overrides};
use runway_proxy::duration;
use runway_proxy::mock::{MockConfig, MockUpstream};

/// Exit code for a configuration the proxy refuses to start with (as clap uses for usage).
const EXIT_CONFIG: u8 = 2;

/// A flag for every setting, listed under its heading (in [`HEADINGS`] order, as clap
/// lists headings in the order it first meets them).
fn setting_flags(mut command: Command) -> Command {
    for heading in HEADINGS {
        for key in KEYS.iter().filter(|key| key.heading() == *heading) {
            let mut arg = Arg::new(key.toml)
                .long(key.flag)
                .value_name("VALUE")
                .help_heading(heading.as_str())
                .help(format!(
                    "{} [env: {}] [default: {}]",
                    key.doc,
                    key.env,
                    key.default_value()
                ));
            if key.is_switch() {
                // A switch: `--allow-private-callbacks` alone means true.
                arg = arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true");
            }
            command = command.arg(arg);
        }
    }
    command
}

fn cli() -> Command {
    let serve = setting_flags(
        Command::new("serve")
            .about("Run the sidecar proxy in front of CometAPI")
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .env("RUNWAY_PROXY_CONFIG")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("TOML config file (flags and environment variables override it)"),
            ),
    );
    let config = Command::new("config")
        .about("Work with configuration files")
        .subcommand_required(true)
        .subcommand(setting_flags(
            Command::new("check")
                .about(
                    "Check a config file (with the environment and any flags over it, as serve would) \
                     and print the effective settings and where each came from; secrets are not shown. \
                     Exits 0 when serve would accept it, 2 when not",
                )
                .arg(
                    Arg::new("file")
                        .value_name("FILE")
                        .env("RUNWAY_PROXY_CONFIG")
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("TOML config file (none: the defaults, the environment and flags only)"),
                ),
        ));
    let mock = Command::new("mock-upstream")
        .about("Run the CometAPI stand-in (Runway routes, task lifecycle, callbacks, faults)")
        .arg(
            Arg::new("listen")
                .long("listen")
                .value_name("ADDR")
                .default_value("127.0.0.1:8090"),
        )
        .arg(
            Arg::new("step")
                .long("step")
                .value_name("DURATION")
                .default_value("2s")
                .help("Time between a task's status changes (each change sends a callback)"),
        )
        .arg(
            Arg::new("feed-delay")
                .long("feed-delay")
                .value_name("DURATION")
                .default_value("0s")
                .help("How long after creation the feed still answers task_not_exist"),
        )
        .arg(
            Arg::new("max-running")
                .long("max-running")
                .value_name("N")
                .value_parser(clap::value_parser!(usize))
                .help("Run at most N tasks at once, like a Runway tier; more wait as THROTTLED (default: no limit)"),
        )
        .arg(
            Arg::new("output-bytes")
                .long("output-bytes")
                .value_name("SIZE")
                .default_value("256KiB")
                .help("Size of each output a succeeded task's URLs serve (under /cdn/, generated as sent)"),
        )
        .arg(
            Arg::new("outputs-expire-after")
                .long("outputs-expire-after")
                .value_name("DURATION")
                .help("Sign output URLs with an expiry this long after they are handed out; 403 after it, like a CDN (default: never)"),
        )
        .arg(
            Arg::new("log-format")
                .long("log-format")
                .value_name("FORMAT")
                .default_value("auto")
                .value_parser(["auto", "pretty", "json"])
                .help("pretty on a terminal, json otherwise (auto), or either always"),
        );
    let demo = Command::new("demo")
        .about("See the proxy work without a CometAPI key: stand-in with faults, proxy and subscriber in one process")
        .arg(
            Arg::new("tasks")
                .long("tasks")
                .value_name("N")
                .default_value("50")
                .value_parser(clap::value_parser!(usize)),
        )
        .arg(
            Arg::new("seed")
                .long("seed")
                .value_name("N")
                .default_value("7")
                .value_parser(clap::value_parser!(u64))
                .help("Seed of the fault sequence, to repeat a run exactly"),
        );
    let key_hash = Command::new("key-hash")
        .about("Print the hash that names an API key in [[guard.keys]], /-/usage and the metrics (reads the key on stdin)")
        .long_about(
            "Print the hash that names an API key in [[guard.keys]], /-/usage, /-/tasks and the metrics.\n\n\
             Reads one key on stdin (so it stays out of the shell's history and the process list), with or \
             without its `Bearer ` prefix, and prints the hex of the first 16 bytes of the SHA-256 of \
             `Bearer <key>`, the Authorization value the SDKs send:\n\n    \
             printf '%s' \"$COMETAPI_KEY\" | runway-proxy key-hash",
        );
    let healthcheck = Command::new("healthcheck")
        .about("Ask a running proxy whether it is alive (/-/healthz) or ready (/-/readyz): exit 0 if so, 1 if not; for container health checks, which have no curl")
        .arg(
            Arg::new("listen")
                .long("listen")
                .value_name("ADDR")
                .env("RUNWAY_PROXY_LISTEN")
                .default_value("127.0.0.1:8080")
                .help("The proxy's listen address (an unspecified one, 0.0.0.0 or [::], is asked on loopback)"),
        )
        .arg(
            Arg::new("ready")
                .long("ready")
                .action(clap::ArgAction::SetTrue)
                .help("Ask /-/readyz (serving, outbox answering) instead of /-/healthz"),
        );
    Command::new("runway-proxy")
        .version(env!("CARGO_PKG_VERSION"))
        .about("An outbound gateway for CometAPI's Runway video endpoints")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(serve)
        .subcommand(config)
        .subcommand(mock)
        .subcommand(demo)
        .subcommand(key_hash)
        .subcommand(healthcheck)
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("runway-proxy: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match matches.subcommand() {
        Some(("serve", args)) => runtime.block_on(serve(args)),
        Some(("mock-upstream", args)) => runtime.block_on(mock_upstream(args)),
        Some(("key-hash", _)) => print_key_hash(),
        Some(("healthcheck", args)) => healthcheck(args),
        Some(("config", args)) => match args.subcommand() {
            Some(("check", args)) => check_config(args),
            _ => ExitCode::from(EXIT_CONFIG),
        },
        Some(("demo", args)) => {
            let tasks = args.get_one::<usize>("tasks").copied().unwrap_or(50);
            let seed = args.get_one::<u64>("seed").copied().unwrap_or(7);
            match runtime.block_on(demo::run(tasks, seed)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => {
                    eprintln!("runway-proxy demo: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => ExitCode::from(EXIT_CONFIG),
    }
}

/// `runway-proxy healthcheck`: one plain HTTP/1.1 GET of an admin probe, blocking, with a
/// short timeout (a health check that hangs is worse than one that fails).
fn healthcheck(args: &ArgMatches) -> ExitCode {
    use std::io::{Read as _, Write as _};
    let raw = args
        .get_one::<String>("listen")
        .map(String::as_str)
        .unwrap_or_default();
    let mut addr = match runway_proxy::config::listen_address(raw) {
        Ok(addr) => addr,
        Err(problem) => {
            eprintln!("runway-proxy healthcheck: listen: {problem}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if addr.ip().is_unspecified() {
        let loopback = match addr {
            std::net::SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        };
        addr.set_ip(loopback);
    }
    let path = if args.get_flag("ready") {
        "/-/readyz"
    } else {
        "/-/healthz"
    };
    let timeout = Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = Vec::new();
        stream.take(4096).read_to_end(&mut head)?;
        Ok(String::from_utf8_lossy(&head).into_owned())
    })();
    match answer {
        Ok(answer) if answer.starts_with("HTTP/1.1 200 ") => ExitCode::SUCCESS,
        Ok(answer) => {
            let status = answer.lines().next().unwrap_or("no answer");
            eprintln!("runway-proxy healthcheck: {path} on {addr}: {status}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("runway-proxy healthcheck: {path} on {addr}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `runway-proxy key-hash`: the key from stdin, its hash on stdout.
fn print_key_hash() -> ExitCode {
    use std::io::Read as _;
    let mut input = Vec::new();
    // A key is short; more than this is not a key (and is not read into memory whole).
    if let Err(err) = std::io::stdin().take(64 * 1024).read_to_end(&mut input) {
        eprintln!("runway-proxy key-hash: cannot read stdin: {err}");
        return ExitCode::FAILURE;
    }
    let Ok(text) = std::str::from_utf8(&input) else {
        eprintln!("runway-proxy key-hash: the key on stdin is not UTF-8");
        return ExitCode::from(EXIT_CONFIG);
    };
    let key = text.trim();
    let key = key.strip_prefix("Bearer ").map_or(key, str::trim);
    if key.is_empty() || key.contains(char::is_whitespace) {
        eprintln!(
            "runway-proxy key-hash: write one API key on stdin, like: printf '%s' \"$COMETAPI_KEY\" | runway-proxy key-hash"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    println!(
        "{}",
        runway_proxy::tasks::key_hash(format!("Bearer {key}").as_bytes())
    );
    ExitCode::SUCCESS
}

/// The settings given as flags, by TOML key.
fn flag_values(args: &ArgMatches) -> Overrides {
    KEYS.iter()
        .filter_map(|key| args.get_one::<String>(key.toml).map(|v| (key.toml, v.clone())))
        .collect()
}

/// `runway-proxy config check [FILE]`: what serve would run with, or why it would not start.
fn check_config(args: &ArgMatches) -> ExitCode {
    let path = args.get_one::<PathBuf>("file");
    let text = match path.map(std::fs::read_to_string).transpose() {
        Ok(text) => text,
        Err(err) => {
            let path = path.map(|p| p.display().to_string()).unwrap_or_default();
            eprintln!("runway-proxy: invalid configuration: cannot read config file {path}: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let (config, origins) = match Config::load_with_origins(text.as_deref(), &env, &flag_values(args)) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("runway-proxy: invalid configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let source = path.map_or_else(
        || "no config file".to_owned(),
        |path| format!("config file {}", path.display()),
    );
    let mut out = format!("# valid: serve would start with these settings ({source})\n");
    let from = |origin: Option<&Origin>| match origin {
        None => "default".to_owned(),
        Some(Origin::Default) => "default".to_owned(),
        Some(Origin::File) => "file".to_owned(),
        Some(Origin::Env(name)) => format!("env {name}"),
        Some(Origin::Flag(name)) => format!("flag --{name}"),
    };
    let width = KEYS.iter().map(|key| key.toml.len()).max().unwrap_or(0);
    for heading in HEADINGS {
        out.push_str(&format!("\n# {heading}\n"));
        for key in KEYS.iter().filter(|key| key.heading() == *heading) {
            out.push_str(&format!(
                "{:<width$}  {:<24}  # {}\n",
                key.toml,
                key.show(&config),
                from(origins.get(key.toml))
            ));
        }
        if *heading == Heading::Retry {
            let rules: Vec<&str> = config.retry.rules.names().collect();
            out.push_str(&format!(
                "{:<width$}  {:<24}  # in order\n",
                "retry.rules",
                rules.join(", ")
            ));
        }
        if *heading == Heading::Limits && !config.guard.keys.is_empty() {
            let labels: Vec<&str> = config
                .guard
                .keys
                .iter()
                .map(|key| key.label.as_deref().unwrap_or("(no label)"))
                .collect();
            out.push_str(&format!(
                "{:<width$}  {:<24}  # file\n",
                "guard.keys",
                labels.join(", ")
            ));
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}

async fn serve(args: &ArgMatches) -> ExitCode {
    let flags = flag_values(args);
    let env = |name: &str| std::env::var(name).ok();
    let path = args.get_one::<PathBuf>("config").cloned();
    let config = match Config::load_from(path.as_deref(), &env, &flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("runway-proxy: invalid configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log = init_tracing(config.log_format);
    let proxy = match Proxy::bind(&config).await {
        Ok(proxy) => proxy,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    proxy.reload_from(ConfigSource::new(path, flags));
    reload_on_hangup(proxy.reloader());
    let shutdown = shutdown_signal();
    tracing::info!(
        listen = %proxy.local_addr(),
        webhook_listen = %proxy.webhook_addr(),
        upstream = %config.upstream,
        "runway-proxy serving"
    );
    proxy.run(shutdown).await;
    tracing::info!("runway-proxy stopped");
    ExitCode::SUCCESS
}

async fn mock_upstream(args: &ArgMatches) -> ExitCode {
    let format = match args.get_one::<String>("log-format").map(String::as_str) {
        Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        _ => LogFormat::Auto,
    };
    let _log = init_tracing(format);
    let mut parsed = BTreeMap::new();
    for name in ["step", "feed-delay"] {
        let raw = args.get_one::<String>(name).map(String::as_str).unwrap_or("0s");
        match duration::parse(raw) {
            Ok(value) => parsed.insert(name, value),
            Err(problem) => {
                eprintln!("runway-proxy: invalid configuration: {name}: {problem} (set by --{name})");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    }
    let listen = args
        .get_one::<String>("listen")
        .map(String::as_str)
        .unwrap_or_default();
    let listen = match runway_proxy::config::listen_address(listen) {
        Ok(listen) => listen,
        Err(problem) => {
            eprintln!("runway-proxy: invalid configuration: listen: {problem} (set by --listen)");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut config = MockConfig::default()
        .step(parsed.get("step").copied().unwrap_or(Duration::from_secs(2)))
        .feed_delay(parsed.get("feed-delay").copied().unwrap_or_default());
    if let Some(most) = args.get_one::<usize>("max-running") {
        config = config.max_running(*most);
    }
    let raw = args
        .get_one::<String>("output-bytes")
        .map_or("256KiB", String::as_str);
    match runway_proxy::config::byte_size(raw) {
        Ok(bytes) => config = config.output_bytes(bytes),
        Err(problem) => {
            eprintln!("runway-proxy: invalid configuration: output-bytes: {problem} (set by --output-bytes)");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if let Some(raw) = args.get_one::<String>("outputs-expire-after") {
        match duration::parse(raw) {
            Ok(lifetime) => config = config.outputs_expire_after(lifetime),
            Err(problem) => {
                eprintln!(
                    "runway-proxy: invalid configuration: outputs-expire-after: {problem} (set by --outputs-expire-after)"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let mock = match MockUpstream::start(listen, config).await {
        Ok(mock) => mock,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the stand-in");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %mock.addr(), control_api = "/-/mock/", "CometAPI stand-in serving");
    shutdown_signal().await;
    mock.shutdown().await;
    ExitCode::SUCCESS
}

/// Log lines queued for the writer thread before a caller waits.
const LOG_QUEUE_LINES: usize = 4096;

/// Logs go to stderr through a writer thread: formatting happens where the event is
/// made, but the `write(2)` is the writer thread's, one per batch of lines (a buffered
/// stderr flushed whenever the queue runs dry), never one per line on a request's path.
/// Colour codes only on a terminal, and never with `NO_COLOR` set. Keep the guard for
/// the life of the process: dropping it flushes what is queued.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Block rather than drop lines when the writer falls behind.
        .lossy(false)
        // The queue is allocated, and every slot written, up front: the default 128,000
        // lines kept 5 MB resident in an idle process. 4,096 lines still hold far more
        // than the writer's 64 KiB batch.
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("runway-proxy-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Auto if !terminal => builder.json().flatten_event(true).init(),
        LogFormat::Auto | LogFormat::Pretty => builder.init(),
    }
    guard
}

/// Reload the configuration at each SIGHUP (the reloader logs and counts the outcome).
/// The handler is installed now, before the proxy says it serves: SIGHUP's default
/// action would end the process.
fn reload_on_hangup(reloader: Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::info!("SIGHUP received: reloading the configuration");
                        let _ = reloader.reload().await;
                    }
                });
            }
            Err(err) => tracing::warn!(error = %err, "cannot listen for SIGHUP: reload with POST /-/reload"),
        }
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives just after the "serving" line
/// (a supervisor stopping the proxy at once) must start a graceful shutdown, not kill
/// the process by the signal's default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |signal: std::io::Result<tokio::signal::unix::Signal>| async move {
                match signal {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => tracing::info!("SIGINT received"),
                () = wait(terminate) => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received");
        } else {
            std::future::pending::<()>().await;
        }
    }
}
