//! The `[otel]` settings: where spans go, as what, and which are sampled; and the
//! standard `OTEL_EXPORTER_OTLP_HEADERS` form.

use super::context::hex_into;
use super::{Ratio, SamplerKind};
use crate::settings::{InvalidSetting, ValueError, check, parse, settings, show};

/// Why an `[otel]` value could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not one of the standard sampler names.
    #[error(
        "{0:?} is not a sampler; use one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
    )]
    Sampler(String),
    /// Not a number from 0 to 1.
    #[error("{0:?} is not a share from 0 to 1 (0.1 records one trace in ten)")]
    Ratio(String),
    /// A header without `=`.
    #[error("headers are written name=value,name=value")]
    HeaderForm,
    /// Not a header name.
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    /// A value that is not percent-encoded UTF-8 text (named by its header).
    #[error("the value of {0} is not percent-encoded text")]
    HeaderEncoding(String),
    /// A value that may not stand in a header (named by its header).
    #[error("the value of {0} is not a header value")]
    HeaderValue(String),
}

impl From<ParseError> for crate::settings::ValueError {
    fn from(err: ParseError) -> Self {
        crate::settings::ValueError::invalid(err)
    }
}

settings! {
    /// Where and as what spans are exported (`[otel]`). No endpoint: tracing is off.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct TraceSettings in otel {
        /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans go to
        /// `{endpoint}/v1/traces`, or to the URL itself if it already ends so.
        pub endpoint: Option<String> = None,
        /// `service.name` of the spans' resource.
        pub service_name: String = "runway-proxy".to_owned(),
        /// Headers sent with each export (a collector's API key, say); marked sensitive, so
        /// `Debug` never shows their values.
        pub headers: Vec<(http::HeaderName, http::HeaderValue)> = Vec::new(),
        /// Which traces are recorded (`OTEL_TRACES_SAMPLER`).
        pub sampler: SamplerKind = SamplerKind::default(),
        /// The share of traces the `*traceidratio` samplers record, 0 to 1
        /// (`OTEL_TRACES_SAMPLER_ARG`).
        pub sampler_arg: Ratio = Ratio::ONE,
    }
    rows {
        endpoint: restart, under Observability,
            env: "OTEL_EXPORTER_OTLP_ENDPOINT",
            flag: "otel-endpoint",
            doc: "OpenTelemetry collector's OTLP/HTTP base URL (http://collector:4318): traces of each request, attempt, callback and delivery are exported to {url}/v1/traces (none: tracing off).",
            parse: parse::optional_text, show: show::optional_text;
        service_name: restart, under Observability,
            env: "OTEL_SERVICE_NAME",
            flag: "otel-service-name",
            doc: "service.name of the exported traces.",
            parse: parse::text, show: show::plain;
        headers: restart, under Observability,
            env: "OTEL_EXPORTER_OTLP_HEADERS",
            flag: "otel-headers",
            doc: "Headers sent with each export, name=value,... with values percent-encoded (a collector's API key); never shown.",
            parse: Self::headers, show: Self::show_headers;
        sampler: live, under Observability,
            env: "OTEL_TRACES_SAMPLER",
            flag: "otel-sampler",
            doc: "Which traces are recorded: parentbased_always_on (the application's traceparent decides, else all), parentbased_traceidratio, traceidratio, always_on, always_off or parentbased_always_off.",
            parse: parse::parsed, show: show::plain;
        sampler_arg: live, under Observability,
            env: "OTEL_TRACES_SAMPLER_ARG",
            flag: "otel-sampler-arg",
            doc: "Share of traces the traceidratio samplers record, 0 to 1 (0.1: one in ten, chosen by trace id).",
            parse: parse::parsed, show: show::plain;
    }
}

/// Read `OTEL_EXPORTER_OTLP_HEADERS`' form: `name=value,name=value`, values
/// percent-encoded (`api-key=abc%20def`). The values come back marked sensitive.
pub fn parse_headers(raw: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ParseError> {
    let mut headers = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(ParseError::HeaderForm);
        };
        let name = http::HeaderName::try_from(name.trim())
            .map_err(|_| ParseError::HeaderName(name.trim().to_owned()))?;
        let decoded =
            percent_decode(value.trim()).ok_or_else(|| ParseError::HeaderEncoding(name.to_string()))?;
        let mut value =
            http::HeaderValue::try_from(decoded).map_err(|_| ParseError::HeaderValue(name.to_string()))?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let mut byte = [0u8; 1];
            // Either case here (traceparent takes lower case only).
            hex_into(&text.get(i + 1..i + 3)?.to_ascii_lowercase(), &mut byte)?;
            out.push(byte[0]);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl TraceSettings {
    /// Check every value.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(endpoint) = &self.endpoint {
            let uri = endpoint.parse::<http::Uri>().ok();
            check(
                uri.as_ref().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some_and(|h| !h.is_empty())
                }),
                "otel.endpoint",
                || format!("{endpoint:?} is not an http(s) URL like http://collector:4318"),
            )?;
            #[cfg(not(feature = "otel"))]
            return Err(InvalidSetting::new(
                "otel.endpoint",
                "this build has no OpenTelemetry export (the `otel` feature)",
            ));
        }
        check(!self.service_name.trim().is_empty(), "otel.service_name", || {
            "must not be empty".into()
        })
    }

    /// Where spans are posted.
    pub fn traces_url(&self) -> Option<String> {
        let endpoint = self.endpoint.as_deref()?.trim_end_matches('/');
        Some(if endpoint.ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{endpoint}/v1/traces")
        })
    }
}

impl TraceSettings {
    /// Export headers, `name=value,...` (values percent-encoded), or `none`.
    fn headers(raw: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ValueError> {
        match raw.trim() {
            "" | "none" => Ok(Vec::new()),
            text => Ok(parse_headers(text)?),
        }
    }

    /// Whether export headers are set: they carry a collector's API key, so never them.
    fn show_headers(headers: &[(http::HeaderName, http::HeaderValue)]) -> String {
        match headers.len() {
            0 => "none".to_owned(),
            _ => "(set)".to_owned(),
        }
    }
}
