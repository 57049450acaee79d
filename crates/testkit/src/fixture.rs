//! Ready-made meshes for cross-process tests: a real `trellis-control`, one server-side proxy per
//! service in front of its app, and one client-side proxy with an explicit outbound port per
//! service, so the hop between the two proxies is meshed. Tests add config files and proxy flags
//! of their own; what the fixture does not start (other workloads, collectors) stays theirs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use crate::mesh::{ControlPlane, Proxy, ProxyBuilder, config_dir, service_yaml};
use crate::{tools, wait};

/// The namespace fixtures put everything in.
pub const NAMESPACE: &str = "default";

/// One service of a [`MeshBuilder`]: a name, its port, and where its app listens.
#[derive(Clone, Debug)]
struct ServiceSpec {
    name: String,
    port: u16,
    app: SocketAddr,
    /// Extra flags of its server proxy.
    args: Vec<OsString>,
}

/// Describes a mesh to start.
#[derive(Clone, Debug, Default)]
pub struct MeshBuilder {
    services: Vec<ServiceSpec>,
    extra_targets: Vec<String>,
    /// Config files beside the Services' (name, text).
    files: Vec<(String, String)>,
    /// Extra flags of the client proxy.
    client_args: Vec<OsString>,
}

impl MeshBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A Service `name.default` on `port`, whose only endpoint is a proxy in front of `app`.
    ///
    /// The Service's `targetPort` is the app's real port, which is also the port the server
    /// proxy registers (`--app-port` defaults to `--app`'s): the port a peer proxy names is the
    /// one the app listens on, as in a pod.
    pub fn service(mut self, name: &str, port: u16, app: SocketAddr) -> Self {
        self.services.push(ServiceSpec {
            name: name.to_string(),
            port,
            app,
            args: Vec::new(),
        });
        self
    }

    /// More flags for the server proxy of service `name` (declared before with
    /// [`MeshBuilder::service`]).
    pub fn server_args<I, A>(mut self, name: &str, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        let service = self
            .services
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("server_args for {name}: no such service declared yet"));
        service.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// More flags for the client proxy.
    pub fn client_args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.client_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Another file `name` in the control plane's config directory, beside the Services'.
    pub fn config_file(mut self, name: &str, text: impl Into<String>) -> Self {
        self.files.push((name.to_string(), text.into()));
        self
    }

    /// Another `--outbound-port` on the client proxy, for a target the config does not have yet.
    pub fn client_target(mut self, target: &str) -> Self {
        self.extra_targets.push(target.to_string());
        self
    }

    /// Starts the control plane, then the server proxies, then the client proxy.
    pub fn start(self) -> Mesh {
        let files: Vec<(String, String)> = self
            .services
            .iter()
            .map(|s| {
                (
                    format!("{}.yaml", s.name),
                    service_yaml(&s.name, NAMESPACE, s.port, s.app.port(), &s.name),
                )
            })
            .chain(self.files.iter().cloned())
            .collect();
        let config = config_dir(&files).unwrap_or_else(|e| panic!("writing mesh config: {e}"));
        let control = ControlPlane::start(config.path())
            .unwrap_or_else(|e| panic!("starting trellis-control: {e}"));
        let url = control.url();

        let mut servers = BTreeMap::new();
        for s in &self.services {
            let mut proxy = ProxyBuilder::loopback(&format!("{}-0", s.name))
                .label("app", &s.name)
                .control(&url)
                .app(s.app);
            for arg in &s.args {
                proxy = proxy.arg(arg.clone());
            }
            let proxy = proxy
                .start()
                .unwrap_or_else(|e| panic!("starting the server proxy of {}: {e}", s.name));
            servers.insert(s.name.clone(), proxy);
        }

        let mut client = ProxyBuilder::loopback("client")
            .label("app", "client")
            .control(&url);
        for s in &self.services {
            client = client.outbound_port(&target(&s.name, s.port));
        }
        for t in &self.extra_targets {
            client = client.outbound_port(t);
        }
        for arg in &self.client_args {
            client = client.arg(arg.clone());
        }
        let client = client
            .start()
            .unwrap_or_else(|e| panic!("starting the client proxy: {e}"));
        let ports = self
            .services
            .iter()
            .map(|s| (s.name.clone(), s.port))
            .collect();
        Mesh {
            client,
            servers,
            control,
            config,
            ports,
        }
    }
}

/// `name.default:port`, the target text proxies take and report.
pub fn target(name: &str, port: u16) -> String {
    format!("{name}.{NAMESPACE}:{port}")
}

/// A running mesh. Fields drop in declaration order: the client first, the control plane last.
#[derive(Debug)]
pub struct Mesh {
    pub client: Proxy,
    pub servers: BTreeMap<String, Proxy>,
    pub control: ControlPlane,
    pub config: tempfile::TempDir,
    ports: BTreeMap<String, u16>,
}

impl Mesh {
    /// The client proxy's local port for service `name`.
    pub fn client_port(&self, name: &str) -> SocketAddr {
        let port = self
            .ports
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("no service {name} in this mesh"));
        self.client.outbound_port(&target(name, port))
    }

    /// The server proxy of service `name`.
    pub fn server(&self, name: &str) -> &Proxy {
        self.servers
            .get(name)
            .unwrap_or_else(|| panic!("no service {name} in this mesh"))
    }

    /// The server proxy of service `name`, to reach its process (its log).
    pub fn server_mut(&mut self, name: &str) -> &mut Proxy {
        self.servers
            .get_mut(name)
            .unwrap_or_else(|| panic!("no service {name} in this mesh"))
    }

    /// Waits until an HTTP GET through the client proxy to service `name` answers 200: discovery
    /// is eventually consistent (the server proxy registers while the client subscribes), so a
    /// test first waits for the mesh to converge, then asserts on exact behaviour.
    pub fn wait_http_route(&self, name: &str, timeout: Duration) {
        let addr = self.client_port(name);
        if let Err(e) = wait::until(timeout, || match tools::http_get(addr, "/converge") {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("answered {code}: {body}")),
            Err(e) => Err(e),
        }) {
            panic!("the mesh never routed to {name} through {addr}: {e}");
        }
    }
}
