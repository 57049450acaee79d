//! Istio `DestinationRule` -> [`DestinationPolicy`]: subsets and traffic policies.
//!
//! `tls.mode` ISTIO_MUTUAL (the default for meshed endpoints: mesh mTLS), DISABLE (meshed
//! hops to the host stay plaintext), SIMPLE and MUTUAL (the proxy originates TLS to the host's
//! endpoints, MUTUAL with a client certificate) are read, with `caCertificates`, `sni`,
//! `subjectAltNames`, `insecureSkipVerify`, and for MUTUAL `clientCertificate` and `privateKey`
//! (both required). `credentialName` and `caCrl` are refused "not supported yet". The files are
//! paths on the proxy's file system, so they are not read here (on Kubernetes the control plane
//! does not see the proxy's files): an unreadable file is the proxy's runtime error, naming this
//! rule and the field (see docs/identity.md).
//! `loadBalancer.simple: PASSTHROUGH` is refused (it bypasses the mesh's balancing and sends to
//! the original address, which needs ServiceEntry support). Refused too: `workloadSelector`,
//! `trafficPolicy.tunnel`, `proxyProtocol`. Ignored with a note: `exportTo`,
//! `localityLbSetting`, `warmupDurationSecs`, `tcpKeepalive`, `maxConnectionDuration`,
//! `useClientProtocol`, `maxConcurrentStreams`, `minHealthPercent`,
//! `splitExternalLocalOriginErrors`, `consecutiveLocalOriginFailures`.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::policy::{
    ClientCertificate, ConnectionPool, HashAlgorithm, HashKey, LoadBalancer, OutlierDetection,
    TlsOrigination,
};
use trellis_model::route::ResourceRef;

use super::PortSelector;
use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::{
    DestinationPolicy, Meta, PolicyLayer, Subset, duration, from_value, non_negative_u32, port,
    resolve_host,
};

#[derive(Debug, Deserialize)]
struct DestinationRule {
    metadata: Metadata,
    spec: Spec,
}

/// The metadata, with the annotations Trellis reads (`trellis.io/health-check`).
#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(flatten)]
    meta: Meta,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    host: String,
    traffic_policy: Option<Policy>,
    #[serde(default)]
    subsets: Vec<SubsetSpec>,
    #[serde(default)]
    export_to: Vec<String>,
    workload_selector: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubsetSpec {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(rename = "trafficPolicy")]
    traffic_policy: Option<Policy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Policy {
    load_balancer: Option<LbSpec>,
    connection_pool: Option<PoolSpec>,
    outlier_detection: Option<OutlierSpec>,
    tls: Option<TlsSpec>,
    #[serde(default)]
    port_level_settings: Vec<PortPolicy>,
    tunnel: Option<serde_yaml::Value>,
    proxy_protocol: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortPolicy {
    port: Option<PortSelector>,
    load_balancer: Option<LbSpec>,
    connection_pool: Option<PoolSpec>,
    outlier_detection: Option<OutlierSpec>,
    tls: Option<TlsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LbSpec {
    simple: Option<String>,
    consistent_hash: Option<HashSpec>,
    locality_lb_setting: Option<serde_yaml::Value>,
    warmup_duration_secs: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HashSpec {
    http_header_name: Option<String>,
    http_cookie: Option<CookieSpec>,
    use_source_ip: Option<bool>,
    http_query_parameter_name: Option<String>,
    ring_hash: Option<serde_yaml::Value>,
    maglev: Option<serde_yaml::Value>,
    minimum_ring_size: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CookieSpec {
    name: String,
    path: Option<String>,
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolSpec {
    tcp: Option<TcpPool>,
    http: Option<HttpPool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TcpPool {
    max_connections: Option<i64>,
    connect_timeout: Option<String>,
    tcp_keepalive: Option<serde_yaml::Value>,
    max_connection_duration: Option<serde_yaml::Value>,
    idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpPool {
    http1_max_pending_requests: Option<i64>,
    http2_max_requests: Option<i64>,
    max_requests_per_connection: Option<i64>,
    max_retries: Option<i64>,
    idle_timeout: Option<String>,
    h2_upgrade_policy: Option<String>,
    use_client_protocol: Option<serde_yaml::Value>,
    max_concurrent_streams: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutlierSpec {
    consecutive5xx_errors: Option<i64>,
    consecutive_gateway_errors: Option<i64>,
    /// Deprecated spelling of consecutiveGatewayErrors.
    consecutive_errors: Option<i64>,
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_percent: Option<i64>,
    min_health_percent: Option<serde_yaml::Value>,
    split_external_local_origin_errors: Option<serde_yaml::Value>,
    consecutive_local_origin_failures: Option<serde_yaml::Value>,
}

/// Istio `ClientTLSSettings`: every field it has, so a misspelt one is an error.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlsSpec {
    mode: Option<String>,
    client_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
    ca_crl: Option<String>,
    sni: Option<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    insecure_skip_verify: Option<bool>,
    credential_name: Option<String>,
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let dr: DestinationRule = from_value(value)?;
    let source = dr.metadata.meta.reference("DestinationRule")?;
    let spec = dr.spec;
    let mut notes = Vec::new();
    if spec.workload_selector.is_some() {
        return Err(FieldError::new(
            "spec.workloadSelector",
            "is not supported yet",
        ));
    }
    if !spec.export_to.is_empty() {
        notes.push("spec.exportTo ignored: policies are visible mesh-wide".to_string());
    }
    let Some(host) = resolve_host(&spec.host, &source.namespace) else {
        return Ok(Translated::Ignored(format!(
            "host {:?} is a wildcard or not a DNS name (wildcard hosts are not supported yet)",
            spec.host
        )));
    };
    let (mut policy, port_policies) = match &spec.traffic_policy {
        None => (PolicyLayer::default(), Vec::new()),
        Some(p) => traffic_policy(&mut notes, &source, "spec.trafficPolicy", p)?,
    };
    policy.health_check = crate::health_check::from_annotations(&dr.metadata.annotations)?;
    let mut subsets: Vec<Subset> = Vec::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let field = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            return Err(FieldError::new(format!("{field}.name"), "is required"));
        }
        if subsets.iter().any(|o| o.name == s.name) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("duplicate subset {:?}", s.name),
            ));
        }
        let (sp, sports) = match &s.traffic_policy {
            None => (PolicyLayer::default(), Vec::new()),
            Some(p) => traffic_policy(&mut notes, &source, &format!("{field}.trafficPolicy"), p)?,
        };
        subsets.push(Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            policy: sp,
            port_policies: sports,
        });
    }
    Ok(Translated::Resource(Resource::DestinationPolicy(Box::new(
        DestinationPolicy {
            source,
            created: dr.metadata.meta.creation_timestamp,
            host,
            policy,
            port_policies,
            subsets,
            notes,
        },
    ))))
}

type Layers = (PolicyLayer, Vec<(u16, PolicyLayer)>);

fn traffic_policy(
    notes: &mut Vec<String>,
    source: &ResourceRef,
    field: &str,
    p: &Policy,
) -> Result<Layers, FieldError> {
    if p.tunnel.is_some() {
        return Err(FieldError::new(
            format!("{field}.tunnel"),
            "is not supported yet",
        ));
    }
    if p.proxy_protocol.is_some() {
        return Err(FieldError::new(
            format!("{field}.proxyProtocol"),
            "is not supported yet",
        ));
    }
    let top = layer(
        notes,
        source,
        field,
        p.load_balancer.as_ref(),
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
        p.tls.as_ref(),
    )?;
    let mut ports: Vec<(u16, PolicyLayer)> = Vec::new();
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let f = format!("{field}.portLevelSettings[{i}]");
        let number = pl
            .port
            .as_ref()
            .ok_or_else(|| FieldError::new(format!("{f}.port"), "is required"))?;
        let n = port(&format!("{f}.port.number"), number.number)?;
        if ports.iter().any(|(p, _)| *p == n) {
            return Err(FieldError::new(
                format!("{f}.port.number"),
                format!("duplicate port {n}"),
            ));
        }
        let l = layer(
            notes,
            source,
            &f,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        )?;
        ports.push((n, l));
    }
    Ok((top, ports))
}

fn layer(
    notes: &mut Vec<String>,
    source: &ResourceRef,
    field: &str,
    lb: Option<&LbSpec>,
    pool: Option<&PoolSpec>,
    od: Option<&OutlierSpec>,
    tls: Option<&TlsSpec>,
) -> Result<PolicyLayer, FieldError> {
    let (mtls_disabled, tls_origination) = match tls {
        Some(tls) => tls_mode(notes, source, &format!("{field}.tls"), tls)?,
        None => (None, None),
    };
    Ok(PolicyLayer {
        load_balancer: lb
            .map(|lb| load_balancer(notes, &format!("{field}.loadBalancer"), lb))
            .transpose()?
            .flatten(),
        connection_pool: pool
            .map(|p| connection_pool(notes, &format!("{field}.connectionPool"), p))
            .transpose()?,
        outlier_detection: od
            .map(|o| outlier(notes, &format!("{field}.outlierDetection"), o))
            .transpose()?,
        retry_budget: None,
        mtls_disabled,
        tls_origination,
        health_check: None,
    })
}

/// `tls`: whether mesh mTLS is off (`Some(true)` for DISABLE, SIMPLE and MUTUAL, `Some(false)`
/// for ISTIO_MUTUAL, `None` when no mode is set) and, for SIMPLE and MUTUAL, the TLS the proxy
/// originates.
fn tls_mode(
    notes: &mut Vec<String>,
    source: &ResourceRef,
    field: &str,
    tls: &TlsSpec,
) -> Result<(Option<bool>, Option<TlsOrigination>), FieldError> {
    let mutual = match tls.mode.as_deref() {
        None => return Ok((None, None)),
        Some("DISABLE") => return Ok((Some(true), None)),
        Some("ISTIO_MUTUAL") => return Ok((Some(false), None)),
        Some("SIMPLE") => false,
        Some("MUTUAL") => true,
        Some(other) => {
            return Err(FieldError::new(
                format!("{field}.mode"),
                format!("must be DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL, got {other:?}"),
            ));
        }
    };
    if tls.credential_name.is_some() {
        return Err(FieldError::new(
            format!("{field}.credentialName"),
            "is not supported yet: give the files in clientCertificate, privateKey and \
             caCertificates (Istio itself reads credentialName at gateways only)",
        ));
    }
    if tls.ca_crl.is_some() {
        return Err(FieldError::new(
            format!("{field}.caCrl"),
            "is not supported yet: certificate revocation lists are not checked",
        ));
    }
    for (name, value) in [
        ("caCertificates", &tls.ca_certificates),
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
    ] {
        if value.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return Err(FieldError::new(
                format!("{field}.{name}"),
                "must be a path to a PEM file on the proxy, or left out",
            ));
        }
    }
    let client_certificate = if mutual {
        let required = |name: &str, value: &Option<String>| {
            value.clone().ok_or_else(|| {
                FieldError::new(
                    format!("{field}.{name}"),
                    "is required with mode MUTUAL (a path to a PEM file on the proxy)",
                )
            })
        };
        Some(ClientCertificate {
            certificate: required("clientCertificate", &tls.client_certificate)?,
            private_key: required("privateKey", &tls.private_key)?,
        })
    } else {
        if tls.client_certificate.is_some() || tls.private_key.is_some() {
            notes.push(format!(
                "{field}: clientCertificate and privateKey ignored: only mode MUTUAL presents a \
                 client certificate"
            ));
        }
        None
    };
    if let Some(sni) = tls.sni.as_deref() {
        let valid = !sni.is_empty()
            && sni
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !valid {
            return Err(FieldError::new(
                format!("{field}.sni"),
                format!("{sni:?} is not a DNS name or an IP address"),
            ));
        }
    }
    for (i, san) in tls.subject_alt_names.iter().enumerate() {
        if san.is_empty() || san.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FieldError::new(
                format!("{field}.subjectAltNames[{i}]"),
                format!("{san:?} is not a DNS name, URI or IP address"),
            ));
        }
    }
    Ok((
        Some(true),
        Some(TlsOrigination {
            ca_certificates: tls.ca_certificates.clone(),
            sni: tls.sni.clone(),
            client_certificate,
            subject_alt_names: tls.subject_alt_names.clone(),
            insecure_skip_verify: tls.insecure_skip_verify == Some(true),
            origin: Some(format!("{source} {field}")),
        }),
    ))
}

fn load_balancer(
    notes: &mut Vec<String>,
    field: &str,
    lb: &LbSpec,
) -> Result<Option<LoadBalancer>, FieldError> {
    if lb.locality_lb_setting.is_some() {
        notes.push(format!(
            "{field}.localityLbSetting ignored: localities are not modelled"
        ));
    }
    if lb.warmup_duration_secs.is_some() {
        notes.push(format!(
            "{field}.warmupDurationSecs ignored: slow start is not supported yet"
        ));
    }
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => Err(FieldError::new(
            field,
            "simple and consistentHash are mutually exclusive",
        )),
        (Some(s), None) => match s.as_str() {
            "UNSPECIFIED" => Ok(None),
            "ROUND_ROBIN" => Ok(Some(LoadBalancer::RoundRobin)),
            "LEAST_REQUEST" | "LEAST_CONN" => Ok(Some(LoadBalancer::LeastRequest)),
            "RANDOM" => Ok(Some(LoadBalancer::Random)),
            "PASSTHROUGH" => Err(FieldError::new(
                format!("{field}.simple"),
                "PASSTHROUGH is not supported yet (it bypasses balancing and needs ServiceEntry)",
            )),
            other => Err(FieldError::new(
                format!("{field}.simple"),
                format!("must be ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH, got {other:?}"),
            )),
        },
        (None, Some(h)) => consistent_hash(&format!("{field}.consistentHash"), h).map(Some),
        (None, None) => Ok(None),
    }
}

fn consistent_hash(field: &str, h: &HashSpec) -> Result<LoadBalancer, FieldError> {
    let mut keys = Vec::new();
    if let Some(name) = &h.http_header_name {
        keys.push(HashKey::Header(name.to_ascii_lowercase()));
    }
    if let Some(c) = &h.http_cookie {
        keys.push(HashKey::Cookie {
            name: c.name.clone(),
            ttl: c
                .ttl
                .as_ref()
                .map(|t| duration(&format!("{field}.httpCookie.ttl"), t))
                .transpose()?,
            path: c.path.clone(),
        });
    }
    if h.use_source_ip == Some(true) {
        keys.push(HashKey::SourceIp);
    }
    if let Some(q) = &h.http_query_parameter_name {
        keys.push(HashKey::QueryParameter(q.clone()));
    }
    let key = match keys.len() {
        1 => keys.remove(0),
        0 => {
            return Err(FieldError::new(
                field,
                "must set one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            ));
        }
        _ => {
            return Err(FieldError::new(
                field,
                "httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName are mutually exclusive",
            ));
        }
    };
    let algorithm = match (&h.ring_hash, &h.maglev) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                field,
                "ringHash and maglev are mutually exclusive",
            ));
        }
        (None, Some(_)) => HashAlgorithm::Maglev,
        _ => HashAlgorithm::Ring,
    };
    // Table and ring sizes are tuning the proxy chooses itself.
    let _ = &h.minimum_ring_size;
    Ok(LoadBalancer::ConsistentHash { key, algorithm })
}

fn count(field: String, v: Option<i64>) -> Result<Option<u32>, FieldError> {
    v.map(|n| non_negative_u32(&field, n)).transpose()
}

fn connection_pool(
    notes: &mut Vec<String>,
    field: &str,
    p: &PoolSpec,
) -> Result<ConnectionPool, FieldError> {
    let mut pool = ConnectionPool::default();
    if let Some(tcp) = &p.tcp {
        let f = format!("{field}.tcp");
        pool.max_connections = count(format!("{f}.maxConnections"), tcp.max_connections)?;
        pool.connect_timeout = tcp
            .connect_timeout
            .as_ref()
            .map(|t| duration(&format!("{f}.connectTimeout"), t))
            .transpose()?;
        if tcp.tcp_keepalive.is_some() || tcp.max_connection_duration.is_some() {
            notes.push(format!(
                "{f}: tcpKeepalive and maxConnectionDuration ignored (not supported yet)"
            ));
        }
        if let Some(t) = &tcp.idle_timeout {
            pool.idle_timeout = Some(duration(&format!("{f}.idleTimeout"), t)?);
        }
    }
    if let Some(http) = &p.http {
        let f = format!("{field}.http");
        pool.max_pending_requests = count(
            format!("{f}.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        )?;
        pool.max_requests = count(format!("{f}.http2MaxRequests"), http.http2_max_requests)?;
        pool.max_requests_per_connection = count(
            format!("{f}.maxRequestsPerConnection"),
            http.max_requests_per_connection,
        )?
        .filter(|n| *n > 0);
        pool.max_retries = count(format!("{f}.maxRetries"), http.max_retries)?;
        if let Some(t) = &http.idle_timeout {
            pool.idle_timeout = Some(duration(&format!("{f}.idleTimeout"), t)?);
        }
        pool.h2_upgrade = match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT") => None,
            Some("UPGRADE") => Some(true),
            Some("DO_NOT_UPGRADE") => Some(false),
            Some(other) => {
                return Err(FieldError::new(
                    format!("{f}.h2UpgradePolicy"),
                    format!("must be DEFAULT, DO_NOT_UPGRADE or UPGRADE, got {other:?}"),
                ));
            }
        };
        if http.use_client_protocol.is_some() || http.max_concurrent_streams.is_some() {
            notes.push(format!(
                "{f}: useClientProtocol and maxConcurrentStreams ignored (meshed hops follow h2UpgradePolicy)"
            ));
        }
    }
    Ok(pool)
}

fn outlier(
    notes: &mut Vec<String>,
    field: &str,
    o: &OutlierSpec,
) -> Result<OutlierDetection, FieldError> {
    let mut od = OutlierDetection::default();
    if let Some(n) = o.consecutive5xx_errors {
        // 0 disables the check, as in Istio.
        od.consecutive_5xx = Some(non_negative_u32(
            &format!("{field}.consecutive5xxErrors"),
            n,
        )?)
        .filter(|n| *n > 0);
    }
    let gateway = o.consecutive_gateway_errors.or(o.consecutive_errors);
    if let Some(n) = gateway {
        od.consecutive_gateway_errors = Some(non_negative_u32(
            &format!("{field}.consecutiveGatewayErrors"),
            n,
        )?)
        .filter(|n| *n > 0);
    }
    if let Some(t) = &o.interval {
        od.interval = duration(&format!("{field}.interval"), t)?;
    }
    if let Some(t) = &o.base_ejection_time {
        od.base_ejection_time = duration(&format!("{field}.baseEjectionTime"), t)?;
    }
    if let Some(n) = o.max_ejection_percent {
        if !(0..=100).contains(&n) {
            return Err(FieldError::new(
                format!("{field}.maxEjectionPercent"),
                format!("must be 0-100, got {n}"),
            ));
        }
        od.max_ejection_percent = n as u32;
    }
    if o.min_health_percent.is_some()
        || o.split_external_local_origin_errors.is_some()
        || o.consecutive_local_origin_failures.is_some()
    {
        notes.push(format!(
            "{field}: minHealthPercent and local-origin settings ignored (not supported yet)"
        ));
    }
    Ok(od)
}

#[cfg(test)]
mod tls_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use trellis_model::policy::TrafficPolicy;

    fn policy(yaml: &str) -> Result<DestinationPolicy, FieldError> {
        match translate(serde_yaml::from_str(yaml).unwrap())? {
            Translated::Resource(Resource::DestinationPolicy(p)) => Ok(*p),
            _ => panic!("not a destination policy"),
        }
    }

    const SIMPLE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: default}\nspec:\n  host: api\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /etc/ca.pem, sni: api.example.com}\n    portLevelSettings:\n    - port: {number: 80}\n      tls: {mode: DISABLE}\n";

    #[test]
    fn simple_carries_the_origination_and_turns_mesh_mtls_off() {
        let dr = policy(SIMPLE).unwrap();
        let mut top = TrafficPolicy::default();
        dr.policy.apply(&mut top);
        assert!(top.mtls_disabled);
        assert_eq!(
            top.tls_origination,
            Some(TlsOrigination {
                ca_certificates: Some("/etc/ca.pem".into()),
                sni: Some("api.example.com".into()),
                origin: Some("DestinationRule default/api spec.trafficPolicy.tls".into()),
                ..TlsOrigination::default()
            })
        );
        // A port-level mode replaces the whole of `tls`: DISABLE drops the origination.
        let (port, layer) = &dr.port_policies[0];
        assert_eq!(*port, 80);
        layer.apply(&mut top);
        assert!(top.mtls_disabled);
        assert_eq!(top.tls_origination, None);
        // It travels to proxies as JSON.
        let mut simple = TrafficPolicy::default();
        dr.policy.apply(&mut simple);
        let json = serde_json::to_string(&simple).unwrap();
        let back: TrafficPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, simple);
    }

    fn with_tls(tls: &str) -> Result<DestinationPolicy, FieldError> {
        policy(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\nspec:\n  host: api\n  trafficPolicy:\n    tls: {tls}\n"
        ))
    }

    fn origination(tls: &str) -> TlsOrigination {
        let dr = with_tls(tls).unwrap();
        let mut top = TrafficPolicy::default();
        dr.policy.apply(&mut top);
        assert!(top.mtls_disabled, "{tls}: origination turns mesh mTLS off");
        top.tls_origination.unwrap()
    }

    #[test]
    fn mutual_carries_the_client_certificate_names_and_skip_verify() {
        let o = origination(
            "{mode: MUTUAL, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem, caCertificates: /etc/ca.pem, subjectAltNames: [api.example.com, 'spiffe://x/api']}",
        );
        assert_eq!(
            o.client_certificate,
            Some(ClientCertificate {
                certificate: "/etc/c.pem".into(),
                private_key: "/etc/k.pem".into(),
            })
        );
        assert_eq!(o.subject_alt_names, ["api.example.com", "spiffe://x/api"]);
        assert!(!o.insecure_skip_verify);
        let o = origination("{mode: SIMPLE, insecureSkipVerify: true}");
        assert!(o.insecure_skip_verify);
        assert_eq!(o.client_certificate, None);
        // SIMPLE presents no certificate: the files are ignored, and the user is told.
        let dr = with_tls("{mode: SIMPLE, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem}")
            .unwrap();
        assert!(
            dr.notes.iter().any(|n| n.contains("only mode MUTUAL")),
            "{:?}",
            dr.notes
        );
        // A port-level origination names its own field, for the proxy's errors.
        let dr = policy("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: shop}\nspec:\n  host: api\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: MUTUAL, clientCertificate: /c, privateKey: /k}\n").unwrap();
        let mut p = TrafficPolicy::default();
        dr.port_policies[0].1.apply(&mut p);
        assert_eq!(
            p.tls_origination.unwrap().origin.as_deref(),
            Some("DestinationRule shop/api spec.trafficPolicy.portLevelSettings[0].tls")
        );
    }

    #[test]
    fn unsupported_settings_are_refused_by_field() {
        for (tls, field) in [
            ("{mode: MUTUALLY}", "spec.trafficPolicy.tls.mode"),
            (
                "{mode: MUTUAL, privateKey: /k.pem}",
                "spec.trafficPolicy.tls.clientCertificate",
            ),
            (
                "{mode: MUTUAL, clientCertificate: /c.pem}",
                "spec.trafficPolicy.tls.privateKey",
            ),
            (
                "{mode: MUTUAL, clientCertificate: ' ', privateKey: /k.pem}",
                "spec.trafficPolicy.tls.clientCertificate",
            ),
            (
                "{mode: SIMPLE, subjectAltNames: [ok.example, '']}",
                "spec.trafficPolicy.tls.subjectAltNames[1]",
            ),
            (
                "{mode: MUTUAL, credentialName: api-cert}",
                "spec.trafficPolicy.tls.credentialName",
            ),
            (
                "{mode: SIMPLE, caCrl: /crl.pem}",
                "spec.trafficPolicy.tls.caCrl",
            ),
            (
                "{mode: SIMPLE, credentialName: api-ca}",
                "spec.trafficPolicy.tls.credentialName",
            ),
            (
                "{mode: SIMPLE, caCertificates: ''}",
                "spec.trafficPolicy.tls.caCertificates",
            ),
            ("{mode: SIMPLE, sni: 'a b'}", "spec.trafficPolicy.tls.sni"),
        ] {
            let err = with_tls(tls).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{tls}: {}", err.message);
        }
    }

    fn pool(http: &str) -> Result<ConnectionPool, FieldError> {
        let dr = policy(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\nspec:\n  host: api\n  trafficPolicy:\n    connectionPool:\n      http: {http}\n"
        ))?;
        let mut top = TrafficPolicy::default();
        dr.policy.apply(&mut top);
        Ok(top.connection_pool)
    }

    #[test]
    fn h2_upgrade_policy_is_read_and_a_bad_value_names_the_field() {
        for (value, upgrade) in [
            ("UPGRADE", Some(true)),
            ("DO_NOT_UPGRADE", Some(false)),
            ("DEFAULT", None),
        ] {
            let p = pool(&format!("{{h2UpgradePolicy: {value}}}")).unwrap();
            assert_eq!(p.h2_upgrade, upgrade, "{value}");
        }
        assert_eq!(pool("{maxRetries: 3}").unwrap().h2_upgrade, None);
        let err = pool("{h2UpgradePolicy: NEVER}").unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("spec.trafficPolicy.connectionPool.http.h2UpgradePolicy")
        );
        assert!(err.message.contains("DO_NOT_UPGRADE"), "{}", err.message);
        // It travels to proxies as JSON.
        let p = pool("{h2UpgradePolicy: DO_NOT_UPGRADE}").unwrap();
        let back: ConnectionPool =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back.h2_upgrade, Some(false));
    }
}
