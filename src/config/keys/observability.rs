//! The settings listed under "Observability" in `serve --help` and `config check`.

use super::super::values::*;
use super::super::{LogFormat, Secret, ValueError};
use super::*;

/// Under "Observability".
pub(super) const KEYS: &[Key] = &[
    key! {
        admin_token, live,
        env: "RUNWAY_PROXY_ADMIN_TOKEN",
        flag: "admin-token",
        doc: "Bearer token every admin path but /-/healthz and /-/readyz requires (none: open on loopback only).",
        set: |c, raw| {
            c.admin_token = match raw.trim() {
                "" | "none" => None,
                token => Some(Secret::new(token)),
            };
            Ok(())
        },
        show: |c| match c.admin_token {
            Some(_) => "(set)".to_owned(),
            None => "none".to_owned(),
        },
    },
    key! {
        access_log, restart,
        env: "RUNWAY_PROXY_ACCESS_LOG",
        flag: "access-log",
        doc: "One log line per proxied request at info (off: at debug). Refusals, retries and webhooks are logged either way.",
        parse: boolean,
        show: |c| c.access_log.to_string(),
    },
    key! {
        otel.endpoint, restart,
        env: "OTEL_EXPORTER_OTLP_ENDPOINT",
        flag: "otel-endpoint",
        doc: "OpenTelemetry collector's OTLP/HTTP base URL (http://collector:4318): traces of each request, attempt, callback and delivery are exported to {url}/v1/traces (none: tracing off).",
        set: |c, raw| {
            c.otel.endpoint = match raw.trim() {
                "" | "none" => None,
                url => Some(url.to_owned()),
            };
            Ok(())
        },
        show: |c| c.otel.endpoint.clone().unwrap_or_else(|| "none".to_owned()),
    },
    key! {
        otel.headers, restart,
        env: "OTEL_EXPORTER_OTLP_HEADERS",
        flag: "otel-headers",
        doc: "Headers sent with each export, name=value,... with values percent-encoded (a collector's API key); never shown.",
        set: |c, raw| {
            c.otel.headers = match raw.trim() {
                "" | "none" => Vec::new(),
                text => crate::trace::parse_headers(text)?,
            };
            Ok(())
        },
        show: |c| match c.otel.headers.len() {
            0 => "none".to_owned(),
            _ => "(set)".to_owned(),
        },
    },
    key! {
        otel.service_name, restart,
        env: "OTEL_SERVICE_NAME",
        flag: "otel-service-name",
        doc: "service.name of the exported traces.",
        set: |c, raw| {
            c.otel.service_name = raw.trim().to_owned();
            Ok(())
        },
        show: |c| c.otel.service_name.clone(),
    },
    key! {
        otel.sampler, live,
        env: "OTEL_TRACES_SAMPLER",
        flag: "otel-sampler",
        doc: "Which traces are recorded: parentbased_always_on (the application's traceparent decides, else all), parentbased_traceidratio, traceidratio, always_on, always_off or parentbased_always_off.",
        set: |c, raw| {
            c.otel.sampler = raw.parse()?;
            Ok(())
        },
        show: |c| c.otel.sampler.as_str().to_owned(),
    },
    key! {
        otel.sampler_arg, live,
        env: "OTEL_TRACES_SAMPLER_ARG",
        flag: "otel-sampler-arg",
        doc: "Share of traces the traceidratio samplers record, 0 to 1 (0.1: one in ten, chosen by trace id).",
        set: |c, raw| {
            c.otel.sampler_arg = raw.parse()?;
            Ok(())
        },
        show: |c| c.otel.sampler_arg.to_string(),
    },
    key! {
        log_format, restart,
        env: "RUNWAY_PROXY_LOG_FORMAT",
        flag: "log-format",
        doc: "Log line format: pretty, json, or auto (pretty on a terminal, json otherwise). The level comes from RUST_LOG (default info).",
        set: |c, raw| {
            c.log_format = match raw {
                "auto" => LogFormat::Auto,
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ValueError::Form(format!(
                        "{raw:?} is not a log format (auto, pretty or json)"
                    )));
                }
            };
            Ok(())
        },
        show: |c| match c.log_format {
            LogFormat::Auto => "auto".to_owned(),
            LogFormat::Pretty => "pretty".to_owned(),
            LogFormat::Json => "json".to_owned(),
        },
    },
];
