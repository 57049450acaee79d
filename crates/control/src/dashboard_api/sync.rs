//! Whether a proxy runs the current config: each destination in its `/config_dump` compared
//! with what compile makes for that target now.
//!
//! Versions cannot answer this: they count updates per discovery stream, so an ACKed version
//! says a proxy took *an* update, not the latest config. The comparison is exact (both sides
//! are `trellis_model::Destination` as JSON) and pure: `expected` is a function the caller
//! backs with `compile`. A dump read just before a config change shows as stale for one scrape.

use serde::Serialize;
use serde_json::Value;
use trellis_model::{Destination, Target};

/// A proxy's config state as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigState {
    /// Every destination it holds is what the control plane would send now.
    Current,
    /// At least one destination differs (listed): an update not yet applied, or refused.
    Stale,
    /// It is still waiting for a first answer for some target.
    Pending,
    /// Its `/config_dump` could not be read.
    Unknown,
}

/// The outcome for one proxy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncReport {
    pub state: ConfigState,
    /// Targets whose destination differs from the current one.
    pub stale_targets: Vec<String>,
    /// Targets the proxy holds.
    pub targets: usize,
    /// The last version the proxy says it ACKed (its own view, from the dump).
    pub proxy_acked_version: Option<u64>,
}

impl SyncReport {
    pub fn unknown() -> Self {
        Self {
            state: ConfigState::Unknown,
            stale_targets: Vec::new(),
            targets: 0,
            proxy_acked_version: None,
        }
    }
}

/// Compares a proxy's `/config_dump` (parsed) with `expected(target)`.
pub fn check(dump: &Value, expected: impl Fn(&Target) -> Option<Destination>) -> SyncReport {
    let discovery = &dump["discovery"]["dump"];
    let Some(targets) = discovery["targets"].as_array() else {
        return SyncReport::unknown();
    };
    let mut stale = Vec::new();
    let mut pending = false;
    for entry in targets {
        let Some(name) = entry["target"].as_str() else {
            continue;
        };
        let Ok(target) = name.parse::<Target>() else {
            stale.push(name.to_string());
            continue;
        };
        let want = expected(&target);
        let same = match (entry["state"].as_str(), &want) {
            (Some("pending"), _) => {
                pending = true;
                true
            }
            (Some("not_found"), None) => true,
            (Some("found"), Some(want)) => {
                serde_json::to_value(want).ok().as_ref() == Some(&entry["destination"])
            }
            _ => false,
        };
        if !same {
            stale.push(name.to_string());
        }
    }
    let state = if !stale.is_empty() {
        ConfigState::Stale
    } else if pending {
        ConfigState::Pending
    } else {
        ConfigState::Current
    };
    SyncReport {
        state,
        stale_targets: stale,
        targets: targets.len(),
        proxy_acked_version: discovery["status"]["last_acked_version"].as_u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use trellis_model::ServiceKey;

    fn dest(port: u16) -> Destination {
        Destination {
            service: ServiceKey {
                namespace: "default".into(),
                name: "ratings".into(),
            },
            port,
            ..Destination::default()
        }
    }

    fn dump(targets: Value) -> Value {
        json!({"discovery": {"dump": {"status": {"last_acked_version": 7}, "targets": targets}}})
    }

    #[test]
    fn current_stale_pending_and_unknown() {
        let found = |d: &Destination| {
            json!({"target": "ratings.default:9080", "state": "found",
                   "destination": serde_json::to_value(d).unwrap()})
        };
        let same = dump(json!([found(&dest(9080))]));
        let report = check(&same, |_| Some(dest(9080)));
        assert_eq!(report.state, ConfigState::Current);
        assert_eq!((report.targets, report.proxy_acked_version), (1, Some(7)));

        let report = check(&same, |_| Some(dest(9081)));
        assert_eq!(report.state, ConfigState::Stale);
        assert_eq!(report.stale_targets, ["ratings.default:9080"]);
        // The service went away but the proxy still holds it.
        assert_eq!(check(&same, |_| None).state, ConfigState::Stale);

        let gone = dump(json!([{"target": "ratings.default:9080", "state": "not_found"}]));
        assert_eq!(check(&gone, |_| None).state, ConfigState::Current);
        let waiting = dump(json!([{"target": "ratings.default:9080", "state": "pending"}]));
        assert_eq!(check(&waiting, |_| None).state, ConfigState::Pending);

        assert_eq!(
            check(&json!({"x": 1}), |_| None).state,
            ConfigState::Unknown
        );
        let odd = dump(json!([{"target": "not a target", "state": "found"}, 5]));
        assert_eq!(check(&odd, |_| None).state, ConfigState::Stale);
    }
}
