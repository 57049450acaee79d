//! The pure part of `trellis identity rotate`: what the control plane and each proxy say about
//! trust anchors and issuers, whether every proxy has reached a rotation step, and the text.

use std::fmt::Write as _;

use serde::Deserialize;

/// `GET /api/v1/identity` on the control plane.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct CaStatus {
    pub anchors: usize,
    /// `idle`, `prepared` or `activated`.
    pub rotation: String,
    pub issuer_generation: u64,
    #[serde(default)]
    pub issued: u64,
}

/// `identity` in a proxy's `/config_dump`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ProxyIdentity {
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub not_after: Option<u64>,
    #[serde(default)]
    pub renewals: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub trust_anchors: usize,
    #[serde(default)]
    pub issuer_generation: u64,
}

/// One connected proxy as seen by the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRow {
    /// `namespace/name`.
    pub workload: String,
    pub identity: Result<ProxyIdentity, String>,
}

/// What a step waits for, and what `activate`/`retire` require before they act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Every proxy trusts every anchor in the bundle (after `prepare`, before `activate`).
    HoldsBundle { anchors: usize },
    /// Every proxy holds a leaf from the current issuer (after `activate`, before `retire`).
    Reissued { generation: u64 },
}

impl Goal {
    /// Why `proxy` has not reached the goal, or `None` when it has.
    pub fn lagging(&self, proxy: &ProxyRow) -> Option<String> {
        let id = match &proxy.identity {
            Ok(id) => id,
            Err(e) => return Some(format!("unreachable: {e}")),
        };
        match *self {
            Self::HoldsBundle { anchors } if id.trust_anchors != anchors => Some(format!(
                "trusts {} anchor(s), the bundle has {anchors}",
                id.trust_anchors
            )),
            Self::Reissued { generation } if id.issuer_generation != generation => {
                let mut why = format!(
                    "holds a leaf of issuer generation {}, want {generation}",
                    id.issuer_generation
                );
                if let Some(e) = &id.last_error {
                    let _ = write!(why, " (last renewal error: {e})");
                }
                Some(why)
            }
            _ => None,
        }
    }

    /// The proxies that have not reached the goal, with why.
    pub fn laggards<'a>(&self, proxies: &'a [ProxyRow]) -> Vec<(&'a str, String)> {
        proxies
            .iter()
            .filter_map(|p| self.lagging(p).map(|why| (p.workload.as_str(), why)))
            .collect()
    }
}

/// The table `status` prints, and every step after it acted.
pub fn render(ca: &CaStatus, proxies: &[ProxyRow], now_unix: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "control plane: {} trust anchor(s), issuer generation {}, rotation {}, {} certificate(s) issued",
        ca.anchors, ca.issuer_generation, ca.rotation, ca.issued
    );
    let next = match ca.rotation.as_str() {
        "prepared" => {
            "next: `trellis identity rotate activate` once every proxy trusts both anchors"
        }
        "activated" => {
            "next: `trellis identity rotate retire` once every proxy holds a leaf of the new generation"
        }
        _ => "next: `trellis identity rotate prepare` starts a rotation",
    };
    let _ = writeln!(out, "{next}");
    if proxies.is_empty() {
        let _ = writeln!(out, "no connected proxies");
        return out;
    }
    let rows: Vec<[String; 5]> = proxies
        .iter()
        .map(|p| match &p.identity {
            Ok(id) => [
                p.workload.clone(),
                id.trust_anchors.to_string(),
                id.issuer_generation.to_string(),
                id.not_after
                    .map_or("-".into(), |t| format!("{}s", t.saturating_sub(now_unix))),
                id.last_error.clone().unwrap_or_else(|| "ok".into()),
            ],
            Err(e) => [
                p.workload.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("unreachable: {e}"),
            ],
        })
        .collect();
    let header = ["PROXY", "ANCHORS", "GENERATION", "EXPIRES IN", "STATE"];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        l
    };
    let _ = writeln!(out, "{}", line(header));
    for r in &rows {
        let _ = writeln!(
            out,
            "{}",
            line([&r[0], &r[1], &r[2], &r[3], &r[4]].map(String::as_str))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, anchors: usize, generation: u64) -> ProxyRow {
        ProxyRow {
            workload: format!("default/{name}"),
            identity: Ok(ProxyIdentity {
                identity: Some(format!("spiffe://cluster.local/ns/default/sa/{name}")),
                not_after: Some(1_000),
                renewals: 1,
                last_error: None,
                trust_anchors: anchors,
                issuer_generation: generation,
            }),
        }
    }

    #[test]
    fn goals_name_the_proxies_that_lag_and_why() {
        let proxies = [
            row("web", 2, 1),
            row("db", 1, 1),
            ProxyRow {
                workload: "default/gone".into(),
                identity: Err("connection refused".into()),
            },
        ];
        let lag = Goal::HoldsBundle { anchors: 2 }.laggards(&proxies);
        assert_eq!(
            lag,
            [
                (
                    "default/db",
                    "trusts 1 anchor(s), the bundle has 2".to_string()
                ),
                (
                    "default/gone",
                    "unreachable: connection refused".to_string()
                ),
            ]
        );
        let lag = Goal::Reissued { generation: 2 }.laggards(&proxies[..1]);
        assert_eq!(
            lag[0].1,
            "holds a leaf of issuer generation 1, want 2".to_string()
        );
        assert!(
            Goal::Reissued { generation: 1 }
                .laggards(&proxies[..2])
                .is_empty()
        );
    }

    #[test]
    fn status_table() {
        let ca = CaStatus {
            anchors: 2,
            rotation: "prepared".into(),
            issuer_generation: 1,
            issued: 4,
        };
        let text = render(&ca, &[row("web", 2, 1)], 400);
        assert_eq!(
            text,
            "control plane: 2 trust anchor(s), issuer generation 1, rotation prepared, 4 certificate(s) issued\n\
             next: `trellis identity rotate activate` once every proxy trusts both anchors\n\
             PROXY        ANCHORS  GENERATION  EXPIRES IN  STATE\n\
             default/web  2        1           600s        ok\n"
        );
    }
}
