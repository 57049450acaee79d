//! The mesh's Prometheus alerting rules (`deploy/alerts/trellis.rules.yml`, embedded), and the
//! same groups as a prometheus-operator `PrometheusRule` for `trellis install --set
//! alerts=true`. One file is the source of both, so that what `promtool test rules` checks is
//! what the cluster gets.

use serde_json::{Value, json};

/// The rules file, as shipped in `deploy/alerts/`.
pub const RULES_YAML: &str = include_str!("../../../../deploy/alerts/trellis.rules.yml");

/// The `--set` key that adds the rules to the install.
pub const KEY: &str = "alerts";

/// The PrometheusRule's name; it lives in the control plane's namespace.
pub const NAME: &str = "trellis-alerts";

/// `alerts=true|false` -> `Some(Ok(on))`; any other assignment -> `None` (not ours).
pub fn parse_set(assignment: &str) -> Option<Result<bool, String>> {
    let (key, value) = assignment.split_once('=')?;
    if key.trim() != KEY {
        return None;
    }
    Some(
        value
            .trim()
            .parse()
            .map_err(|_| format!("{KEY}: {:?} is not true or false", value.trim())),
    )
}

/// The rule groups of [`RULES_YAML`] (`groups:`), as JSON.
pub fn groups() -> Result<Value, serde_yaml::Error> {
    let file: Value = serde_yaml::from_str(RULES_YAML)?;
    Ok(file["groups"].clone())
}

/// `monitoring.coreos.com/v1 PrometheusRule` holding [`groups`]. Labelled like the rest of the
/// install (`app.kubernetes.io/part-of: trellis`), which is what a Prometheus'
/// `ruleSelector` can select on.
pub fn prometheus_rule(namespace: &str) -> Result<Value, serde_yaml::Error> {
    Ok(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": NAME,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": NAME,
                "app.kubernetes.io/part-of": "trellis",
            },
        },
        "spec": {"groups": groups()?},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_embedded_rules_and_the_flag() {
        let groups = groups().unwrap();
        let names: Vec<&str> = groups
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g["name"].as_str())
            .collect();
        assert!(names.contains(&"trellis-control-plane"), "{names:?}");
        let rule = prometheus_rule("trellis-system").unwrap();
        assert_eq!(rule["spec"]["groups"], groups);
        assert_eq!(parse_set("alerts=true"), Some(Ok(true)));
        assert_eq!(parse_set(" alerts = false"), Some(Ok(false)));
        assert!(parse_set("alerts=yes").unwrap().is_err());
        assert_eq!(parse_set("replicas=3"), None);
    }
}
