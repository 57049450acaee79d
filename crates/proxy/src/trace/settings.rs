//! Telemetry settings the control plane sends (Istio `Telemetry`, resolved for this workload:
//! `InboundPolicy.telemetry_json`), applied to the running tracer and access log without a
//! restart. A setting the control plane leaves out falls back to the proxy's flag
//! (`--trace-sampling`, `--access-log`), so a proxy's flags stay its defaults until config
//! says otherwise, and removing the Telemetry restores them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Tracer;
use crate::accesslog::{AccessLog, Format};
use crate::metric_overrides::Overrides;

/// The JSON object of `telemetry_json`; every key optional (absent: the flag's value).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub sampling: Option<f64>,
    #[serde(default)]
    pub tracing_disabled: Option<bool>,
    #[serde(default)]
    pub access_logging: Option<bool>,
    #[serde(default)]
    pub access_log_format: Option<LineFormat>,
    #[serde(default)]
    pub access_log_min_status: Option<u16>,
    /// The collector of the workload's tracing provider (Istio `extensionProviders`, resolved
    /// by the control plane); `None`: `--otlp-endpoint`.
    #[serde(default)]
    pub collector: Option<super::export::Collector>,
    /// Istio metrics overrides; `None` (or absent): none.
    #[serde(default)]
    pub metric_overrides: Option<Vec<crate::metric_overrides::Rule>>,
}

/// The format a Telemetry's access-log provider names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    Json,
    Text,
}

/// The proxy's flags: what is in force where the control plane says nothing.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub sampling: f64,
    pub access_log: Format,
}

/// Parses `telemetry_json` (empty is `{}`). Unknown keys are ignored so a newer control plane
/// can add settings.
pub fn parse(json: &str) -> Result<Settings, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(Settings::default());
    }
    serde_json::from_str(json)
}

/// The access-log format and least status logged that `settings` ask for.
pub fn access_log(settings: &Settings, defaults: &Defaults) -> (Format, u16) {
    let format = match settings.access_logging {
        None => defaults.access_log,
        Some(false) => Format::Off,
        Some(true) => match settings.access_log_format {
            Some(LineFormat::Json) => Format::Json,
            Some(LineFormat::Text) => Format::Text,
            // A provider that names no format: the flag's format if it set one, else text
            // (Istio's built-in `envoy` provider writes text).
            None if defaults.access_log != Format::Off => defaults.access_log,
            None => Format::Text,
        },
    };
    (format, settings.access_log_min_status.unwrap_or(0))
}

/// Applies `settings` over `defaults`.
pub fn apply(settings: &Settings, defaults: &Defaults, tracer: Option<&Tracer>, log: &AccessLog) {
    if let Some(tracer) = tracer {
        tracer.set_sampling(settings.sampling.unwrap_or(defaults.sampling));
        tracer.set_reporting(!settings.tracing_disabled.unwrap_or(false));
        tracer.set_collector(settings.collector.clone());
    }
    let (format, min_status) = access_log(settings, defaults);
    log.set(format, min_status);
}

/// Follows the control plane's telemetry settings until `stop`. A value that does not parse
/// is logged and skipped: the settings in force stay.
pub async fn follow(
    mut rx: watch::Receiver<Arc<str>>,
    defaults: Defaults,
    tracer: Option<Arc<Tracer>>,
    log: Arc<AccessLog>,
    overrides: Arc<Overrides>,
    stop: CancellationToken,
) {
    loop {
        let json = rx.borrow_and_update().clone();
        match parse(&json) {
            Ok(settings) => {
                apply(&settings, &defaults, tracer.as_deref(), &log);
                overrides.set(settings.metric_overrides.clone().unwrap_or_default());
                tracing::info!(
                    sampling = tracer.as_deref().map(Tracer::sampling),
                    span_reporting = tracer.as_deref().map(Tracer::reporting),
                    collector = ?tracer.as_deref().and_then(Tracer::collector).map(|c| c.endpoint),
                    access_log = ?log.format(),
                    access_log_min_status = log.min_status(),
                    metric_overrides = overrides.rules().len(),
                    "telemetry settings applied"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, json = %json, "ignoring unreadable telemetry settings")
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: Defaults = Defaults {
        sampling: 0.01,
        access_log: Format::Off,
    };

    #[test]
    fn absent_keys_keep_the_flags() {
        let s = parse("").unwrap();
        assert_eq!(access_log(&s, &OFF), (Format::Off, 0));
        let json_flag = Defaults {
            access_log: Format::Json,
            ..OFF
        };
        assert_eq!(access_log(&s, &json_flag), (Format::Json, 0));
    }

    #[test]
    fn on_off_format_and_filter() {
        let on = parse(r#"{"access_logging": true}"#).unwrap();
        assert_eq!(access_log(&on, &OFF), (Format::Text, 0));
        let json =
            parse(r#"{"access_logging": true, "access_log_format": "json", "access_log_min_status": 500, "future": 1}"#)
                .unwrap();
        assert_eq!(access_log(&json, &OFF), (Format::Json, 500));
        let off = parse(r#"{"access_logging": false}"#).unwrap();
        let text_flag = Defaults {
            access_log: Format::Text,
            ..OFF
        };
        assert_eq!(access_log(&off, &text_flag), (Format::Off, 0));
        assert!(parse(r#"{"sampling": "all"}"#).is_err());
        let c = parse(r#"{"collector": {"endpoint": "http://127.0.0.1:4318/v1/traces", "protocol": "http/protobuf"}}"#)
            .unwrap();
        assert_eq!(
            c.collector,
            Some(crate::trace::export::Collector {
                endpoint: "http://127.0.0.1:4318/v1/traces".into(),
                protocol: crate::trace::export::Protocol::HttpProtobuf,
            })
        );
    }

    #[test]
    fn applies_to_the_tracer_and_falls_back() {
        let (tracer, _rx) = Tracer::new(0.01, Default::default());
        let log = AccessLog::start(
            Format::Off,
            Some(
                &std::env::temp_dir().join(format!("trellis-settings-{}.log", std::process::id())),
            ),
            Arc::default(),
        )
        .unwrap();
        let s = parse(r#"{"sampling": 1.0, "tracing_disabled": true, "access_logging": true}"#)
            .unwrap();
        apply(&s, &OFF, Some(&tracer), &log);
        assert_eq!(tracer.sampling(), 1.0);
        assert!(!tracer.reporting());
        assert_eq!(log.format(), Format::Text);
        apply(&Settings::default(), &OFF, Some(&tracer), &log);
        assert!((tracer.sampling() - 0.01).abs() < 1e-9);
        assert!(tracer.reporting());
        assert_eq!(log.format(), Format::Off);
    }
}
