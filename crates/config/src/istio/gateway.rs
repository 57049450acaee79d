//! Istio `Gateway` (networking.istio.io v1, v1beta1, v1alpha3): which gateway workloads
//! (`selector`) listen on which ports (`servers[].port`) for which hosts, with what TLS.
//!
//! `tls.mode: ISTIO_MUTUAL` on an HTTP/HTTPS server: reached over the mesh's mTLS only (the
//! egress gateway pattern). Refused "not supported yet": `servers[].bind`, `defaultEndpoint`,
//! `tls.mode` `OPTIONAL_MUTUAL`, `ISTIO_MUTUAL` on TLS/TCP servers, protocols other than HTTP, HTTPS, TLS, TCP (HTTP2, GRPC
//! and MONGO are served as HTTP/TCP would be, so they are read as such). Noted and ignored:
//! `tls.minProtocolVersion`, `maxProtocolVersion`, `cipherSuites`, `subjectAltNames`,
//! `verifyCertificate*`, `port.targetPort`.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::gateway::ListenerProtocol;

use crate::document::{Resource, Translated};
use crate::gateways::{
    Credential, GatewayResource, HostRef, IstioGateway, Server, ServerTls, TlsMode,
};
use crate::kube::{FieldError, not_yet};
use crate::traffic::{Meta, from_value, port};

#[derive(Debug, Deserialize)]
struct Gateway {
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    servers: Vec<ServerSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServerSpec {
    port: PortSpec,
    #[serde(default)]
    hosts: Vec<String>,
    tls: Option<TlsSpec>,
    name: Option<String>,
    bind: Option<String>,
    default_endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortSpec {
    number: i64,
    protocol: String,
    name: Option<String>,
    target_port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlsSpec {
    #[serde(default)]
    https_redirect: bool,
    mode: Option<String>,
    server_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
    ca_crl: Option<String>,
    credential_name: Option<String>,
    #[serde(default)]
    credential_names: Vec<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    verify_certificate_spki: Vec<String>,
    #[serde(default)]
    verify_certificate_hash: Vec<String>,
    min_protocol_version: Option<String>,
    max_protocol_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let gw: Gateway = from_value(value)?;
    let source = gw.metadata.reference("Gateway")?;
    let mut notes = Vec::new();
    if gw.spec.servers.is_empty() {
        return Err(FieldError::new(
            "spec.servers",
            "must name at least one server",
        ));
    }
    let mut servers = Vec::new();
    for (i, s) in gw.spec.servers.iter().enumerate() {
        servers.push(server(&format!("spec.servers[{i}]"), s, &mut notes)?);
    }
    // Two servers on one port must agree on the protocol: the port is one listener.
    for (i, a) in servers.iter().enumerate() {
        if let Some(b) = servers[..i].iter().find(|b| b.port == a.port) {
            let plain = |p| matches!(p, ListenerProtocol::Http | ListenerProtocol::Tcp);
            if plain(a.protocol) != plain(b.protocol)
                || (plain(a.protocol) && a.protocol != b.protocol)
            {
                return Err(FieldError::new(
                    format!("spec.servers[{i}].port.protocol"),
                    format!(
                        "port {} is already declared with protocol {:?} by another server; one port is one listener",
                        a.port, b.protocol
                    ),
                ));
            }
        }
    }
    Ok(Translated::Resource(Resource::Gateway(Box::new(
        GatewayResource::Istio(IstioGateway {
            source,
            created: gw.metadata.creation_timestamp,
            selector: gw.spec.selector,
            servers,
            notes,
        }),
    ))))
}

fn protocol(field: &str, p: &str) -> Result<ListenerProtocol, FieldError> {
    Ok(match p.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTP2" | "GRPC" => ListenerProtocol::Http,
        "HTTPS" => ListenerProtocol::Https,
        "TLS" => ListenerProtocol::Tls,
        "TCP" | "MONGO" => ListenerProtocol::Tcp,
        other => {
            return Err(FieldError::new(
                field,
                format!("must be one of HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, MONGO; got {other:?}"),
            ));
        }
    })
}

fn host_ref(field: &str, h: &str) -> Result<HostRef, FieldError> {
    let (namespace, host) = match h.split_once('/') {
        Some(("*", host)) => (None, host),
        Some((ns, host)) => (Some(ns.to_string()), host),
        None => (None, h),
    };
    if !crate::gateways::is_istio_host(host) {
        return Err(FieldError::new(
            field,
            format!(
                "must be a host name, \"*\" or \"*.suffix\" (optionally with a namespace/ prefix), got {h:?}"
            ),
        ));
    }
    Ok(HostRef {
        namespace,
        host: host.to_ascii_lowercase(),
    })
}

fn server(field: &str, s: &ServerSpec, notes: &mut Vec<String>) -> Result<Server, FieldError> {
    if s.bind.is_some() {
        return Err(not_yet(
            format!("{field}.bind"),
            "binding a server to one address",
        ));
    }
    if s.default_endpoint.is_some() {
        return Err(not_yet(
            format!("{field}.defaultEndpoint"),
            "defaultEndpoint",
        ));
    }
    let port_number = port(&format!("{field}.port.number"), s.port.number)?;
    if s.port.target_port.is_some() {
        notes.push(format!(
            "{field}.port.targetPort ignored: the gateway listens on port.number"
        ));
    }
    let protocol = protocol(&format!("{field}.port.protocol"), &s.port.protocol)?;
    if s.hosts.is_empty() {
        return Err(FieldError::new(
            format!("{field}.hosts"),
            "must name at least one host",
        ));
    }
    let hosts = s
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| host_ref(&format!("{field}.hosts[{i}]"), h))
        .collect::<Result<Vec<_>, _>>()?;
    let https_redirect = s.tls.as_ref().is_some_and(|t| t.https_redirect);
    let tls = match &s.tls {
        None => None,
        Some(t) => tls(&format!("{field}.tls"), t, protocol, notes)?,
    };
    if matches!(protocol, ListenerProtocol::Https) && tls.is_none() {
        return Err(FieldError::new(
            format!("{field}.tls"),
            "is required for protocol HTTPS (mode SIMPLE or MUTUAL with a certificate)",
        ));
    }
    if matches!(protocol, ListenerProtocol::Tls) && tls.is_none() {
        return Err(FieldError::new(
            format!("{field}.tls"),
            "is required for protocol TLS (mode PASSTHROUGH, SIMPLE or MUTUAL)",
        ));
    }
    if let Some(t) = &tls
        && matches!(protocol, ListenerProtocol::Http | ListenerProtocol::Tcp)
    {
        return Err(FieldError::new(
            format!("{field}.tls.mode"),
            format!(
                "{:?} needs protocol HTTPS or TLS, the server's protocol is {}",
                t.mode, s.port.protocol
            ),
        ));
    }
    if let Some(ServerTls {
        mode: TlsMode::Passthrough,
        ..
    }) = &tls
        && protocol == ListenerProtocol::Https
    {
        return Err(FieldError::new(
            format!("{field}.tls.mode"),
            "PASSTHROUGH needs protocol TLS (HTTPS terminates)",
        ));
    }
    Ok(Server {
        port: port_number,
        name: s.name.clone().or_else(|| s.port.name.clone()),
        protocol,
        hosts,
        https_redirect,
        tls,
    })
}

/// A server's `tls`: `None` for an HTTP server without a mode (only `httpsRedirect`, which
/// the caller reads from the spec).
fn tls(
    field: &str,
    t: &TlsSpec,
    protocol: ListenerProtocol,
    notes: &mut Vec<String>,
) -> Result<Option<ServerTls>, FieldError> {
    if t.https_redirect && protocol != ListenerProtocol::Http {
        return Err(FieldError::new(
            format!("{field}.httpsRedirect"),
            "applies to HTTP servers only",
        ));
    }
    for (set, name) in [
        (!t.subject_alt_names.is_empty(), "subjectAltNames"),
        (
            !t.verify_certificate_spki.is_empty(),
            "verifyCertificateSpki",
        ),
        (
            !t.verify_certificate_hash.is_empty(),
            "verifyCertificateHash",
        ),
        (t.min_protocol_version.is_some(), "minProtocolVersion"),
        (t.max_protocol_version.is_some(), "maxProtocolVersion"),
        (!t.cipher_suites.is_empty(), "cipherSuites"),
    ] {
        if set {
            notes.push(format!(
                "{field}.{name} ignored: the gateway uses TLS 1.2/1.3 with rustls' defaults"
            ));
        }
    }
    if t.ca_crl.is_some() {
        return Err(not_yet(
            format!("{field}.caCrl"),
            "certificate revocation lists",
        ));
    }
    if !t.credential_names.is_empty() {
        return Err(not_yet(
            format!("{field}.credentialNames"),
            "several credentials per server",
        ));
    }
    let mode = match t.mode.as_deref() {
        None if protocol == ListenerProtocol::Http => return Ok(None),
        None | Some("SIMPLE") => TlsMode::Simple,
        Some("MUTUAL") => TlsMode::Mutual,
        Some("PASSTHROUGH") => TlsMode::Passthrough,
        // Reached over the mesh's mTLS (the sidecar's hop, the gateway's own identity): HTTP
        // inside, which the gateway serves behind its inbound listener.
        Some("ISTIO_MUTUAL")
            if matches!(protocol, ListenerProtocol::Http | ListenerProtocol::Https) =>
        {
            return Ok(Some(ServerTls {
                mode: TlsMode::IstioMutual,
                credential: None,
            }));
        }
        Some(m @ ("ISTIO_MUTUAL" | "OPTIONAL_MUTUAL" | "AUTO_PASSTHROUGH")) => {
            return Err(not_yet(format!("{field}.mode"), &format!("mode {m}")));
        }
        Some(other) => {
            return Err(FieldError::new(
                format!("{field}.mode"),
                format!("must be one of SIMPLE, MUTUAL, PASSTHROUGH, ISTIO_MUTUAL; got {other:?}"),
            ));
        }
    };
    if mode == TlsMode::Passthrough {
        return Ok(Some(ServerTls {
            mode,
            credential: None,
        }));
    }
    let credential = match (&t.credential_name, &t.server_certificate, &t.private_key) {
        (Some(name), None, None) => Credential::Secret(name.clone()),
        (None, Some(cert), Some(key)) => Credential::Files {
            cert_chain: cert.clone(),
            private_key: key.clone(),
            ca_certificates: t.ca_certificates.clone(),
        },
        (None, None, None) => {
            return Err(FieldError::new(
                field,
                format!("mode {mode:?} needs credentialName, or serverCertificate and privateKey"),
            ));
        }
        (Some(_), _, _) => {
            return Err(FieldError::new(
                format!("{field}.credentialName"),
                "cannot be combined with serverCertificate/privateKey",
            ));
        }
        (None, Some(_), None) => {
            return Err(FieldError::new(
                format!("{field}.privateKey"),
                "is required with serverCertificate",
            ));
        }
        (None, None, Some(_)) => {
            return Err(FieldError::new(
                format!("{field}.serverCertificate"),
                "is required with privateKey",
            ));
        }
    };
    if mode == TlsMode::Mutual
        && matches!(
            &credential,
            Credential::Files {
                ca_certificates: None,
                ..
            }
        )
    {
        return Err(FieldError::new(
            format!("{field}.caCertificates"),
            "is required for MUTUAL with file certificates",
        ));
    }
    Ok(Some(ServerTls {
        mode,
        credential: Some(credential),
    }))
}

#[cfg(test)]
mod tests {
    use crate::{Outcome, Resource, parse_documents};

    fn parse(yaml: &str) -> Outcome {
        parse_documents("gw.yaml", yaml.as_bytes())
            .remove(0)
            .outcome
    }

    #[test]
    fn bookinfo_gateway_is_read() {
        let out = parse(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bookinfo-gateway}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: ['*']\n",
        );
        let Outcome::Resource(Resource::Gateway(g)) = out else {
            panic!("{out:?}")
        };
        let crate::gateways::GatewayResource::Istio(g) = *g else {
            panic!()
        };
        assert_eq!(g.servers[0].port, 8080);
        assert_eq!(g.selector["istio"], "ingressgateway");
    }

    #[test]
    fn errors_name_the_field() {
        for (yaml, want) in [
            (
                "spec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n",
                "spec.servers[0].tls: is required for protocol HTTPS",
            ),
            (
                "spec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE}\n",
                "spec.servers[0].tls: mode Simple needs credentialName",
            ),
            (
                "spec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['a*b']\n",
                "spec.servers[0].hosts[0]: must be a host name",
            ),
            (
                "spec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n  - port: {number: 80, name: t, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: PASSTHROUGH}\n",
                "spec.servers[1].port.protocol: port 80 is already declared",
            ),
            (
                "spec:\n  servers:\n  - port: {number: 80, name: t, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: ISTIO_MUTUAL}\n",
                "spec.servers[0].tls.mode: mode ISTIO_MUTUAL is not supported yet",
            ),
        ] {
            let doc = format!(
                "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: g}}\n{yaml}"
            );
            let Outcome::Invalid(err) = parse(&doc) else {
                panic!("{yaml} should be invalid")
            };
            assert!(
                err.to_string().contains(want),
                "{err} should contain {want}"
            );
        }
    }
}
