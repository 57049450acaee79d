//! The `trellis.io/health-check` annotation: active health checks for a destination, which
//! Istio's DestinationRule has no field for. Its value is one JSON object:
//!
//! ```json
//! {"path": "/healthz", "interval": "5s", "timeout": "1s",
//!  "unhealthyThreshold": 3, "healthyThreshold": 2}
//! ```
//!
//! `path` is required (an absolute path); the rest default to 10 s, 1 s, 3 and 2. Errors name
//! the annotation and the key, e.g. `metadata.annotations["trellis.io/health-check"].interval`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use trellis_model::policy::HealthCheck;

use crate::kube::FieldError;
use crate::traffic::duration;

pub const ANNOTATION: &str = "trellis.io/health-check";

const FIELD: &str = "metadata.annotations[\"trellis.io/health-check\"]";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    unhealthy_threshold: Option<u32>,
    healthy_threshold: Option<u32>,
}

/// The health check the annotations ask for, if any.
pub(crate) fn from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<HealthCheck>, FieldError> {
    let Some(text) = annotations.get(ANNOTATION) else {
        return Ok(None);
    };
    let spec: Spec = serde_json::from_str(text)
        .map_err(|e| FieldError::new(FIELD, format!("is not a valid health check: {e}")))?;
    let path = spec
        .path
        .ok_or_else(|| FieldError::new(format!("{FIELD}.path"), "is required"))?;
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FieldError::new(
            format!("{FIELD}.path"),
            format!("must be an absolute path without spaces, got {path:?}"),
        ));
    }
    let dur = |key: &str, v: Option<String>, default: Duration| -> Result<Duration, FieldError> {
        let d = match v {
            None => default,
            Some(s) => duration(&format!("{FIELD}.{key}"), &s)?,
        };
        if d < Duration::from_millis(10) {
            return Err(FieldError::new(
                format!("{FIELD}.{key}"),
                format!("must be at least 10ms, got {d:?}"),
            ));
        }
        Ok(d)
    };
    let interval = dur("interval", spec.interval, Duration::from_secs(10))?;
    let timeout = dur("timeout", spec.timeout, Duration::from_secs(1))?;
    if timeout > interval {
        return Err(FieldError::new(
            format!("{FIELD}.timeout"),
            format!("must not exceed the interval ({interval:?}), got {timeout:?}"),
        ));
    }
    let threshold = |key: &str, v: Option<u32>, default: u32| -> Result<u32, FieldError> {
        match v.unwrap_or(default) {
            0 => Err(FieldError::new(
                format!("{FIELD}.{key}"),
                "must be at least 1",
            )),
            n => Ok(n),
        }
    };
    Ok(Some(HealthCheck {
        path,
        interval,
        timeout,
        unhealthy_threshold: threshold("unhealthyThreshold", spec.unhealthy_threshold, 3)?,
        healthy_threshold: threshold("healthyThreshold", spec.healthy_threshold, 2)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<Option<HealthCheck>, FieldError> {
        from_annotations(&[(ANNOTATION.to_string(), v.to_string())].into())
    }

    #[test]
    fn full_and_defaulted() {
        let hc = parse(r#"{"path":"/healthz","interval":"5s","timeout":"500ms","unhealthyThreshold":2,"healthyThreshold":1}"#)
            .unwrap()
            .unwrap();
        assert_eq!(hc.path, "/healthz");
        assert_eq!(hc.interval, Duration::from_secs(5));
        assert_eq!(hc.timeout, Duration::from_millis(500));
        assert_eq!((hc.unhealthy_threshold, hc.healthy_threshold), (2, 1));
        let d = parse(r#"{"path":"/ready"}"#).unwrap().unwrap();
        assert_eq!(d.interval, Duration::from_secs(10));
        assert_eq!((d.unhealthy_threshold, d.healthy_threshold), (3, 2));
        assert_eq!(from_annotations(&BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn errors_name_the_key() {
        let field = |v: &str| parse(v).unwrap_err().field.unwrap_or_default();
        assert!(field(r#"{"interval":"5s"}"#).ends_with("].path"));
        assert!(field(r#"{"path":"healthz"}"#).ends_with("].path"));
        assert!(field(r#"{"path":"/h","interval":"soon"}"#).ends_with("].interval"));
        assert!(field(r#"{"path":"/h","interval":"1s","timeout":"2s"}"#).ends_with("].timeout"));
        assert!(field(r#"{"path":"/h","healthyThreshold":0}"#).ends_with("].healthyThreshold"));
        let e = parse(r#"{"path":"/h","every":"1s"}"#).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
        assert_eq!(e.field.as_deref(), Some(FIELD));
    }
}
