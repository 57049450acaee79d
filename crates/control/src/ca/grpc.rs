//! `trellis.identity.v1.Identity` over tonic: converts messages and statuses, delegates to
//! [`CaState`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use futures_util::Stream;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use trellis_api::identity as pb;

use super::{BundleView, CaState, CertifyError, CertifyInput};

#[derive(Debug)]
pub struct IdentityService {
    ca: Arc<CaState>,
    /// Ends every bundle stream when the control plane stops: an open stream would otherwise
    /// hold tonic's graceful shutdown forever (proxies reconnect and keep their bundle).
    shutdown: CancellationToken,
}

impl IdentityService {
    pub fn new(ca: Arc<CaState>, shutdown: CancellationToken) -> Self {
        Self { ca, shutdown }
    }

    pub fn into_server(self) -> pb::identity_server::IdentityServer<Self> {
        pb::identity_server::IdentityServer::new(self)
    }
}

fn bundle_to_wire(view: &BundleView) -> pb::Bundle {
    pb::Bundle {
        roots_pem: view.bundle.roots_pem.clone(),
        issuer_generation: view.issuer_generation,
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let peer = request.remote_addr();
        let req = request.into_inner();
        let input = CertifyInput {
            namespace: &req.namespace,
            service_account: &req.service_account,
            csr: req.csr_pem.as_bytes(),
            join_token: &req.join_token,
        };
        match self.ca.certify(&input).await {
            Ok((issued, view)) => {
                tracing::debug!(namespace = %req.namespace, service_account = %req.service_account, "certificate issued");
                let not_after_unix = issued
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                Ok(Response::new(pb::CertifyResponse {
                    certificate_chain_pem: issued.chain_pem,
                    not_after_unix,
                    bundle: Some(bundle_to_wire(&view)),
                }))
            }
            Err(err) => {
                tracing::warn!(?peer, namespace = %req.namespace, service_account = %req.service_account, error = %err, "certificate refused");
                Err(match &err {
                    CertifyError::Token(_)
                    | CertifyError::TokenRequired
                    | CertifyError::ServiceAccountTokenRequired
                    | CertifyError::Review(super::ReviewError::Refused(_)) => {
                        Status::unauthenticated(err.to_string())
                    }
                    CertifyError::Review(super::ReviewError::Unavailable(_)) => {
                        Status::unavailable(err.to_string())
                    }
                    e if e.is_denied() => Status::permission_denied(err.to_string()),
                    _ => Status::invalid_argument(err.to_string()),
                })
            }
        }
    }

    type WatchBundleStream = Pin<Box<dyn Stream<Item = Result<pb::Bundle, Status>> + Send>>;

    async fn watch_bundle(
        &self,
        _request: Request<pb::WatchBundleRequest>,
    ) -> Result<Response<Self::WatchBundleStream>, Status> {
        let rx = self.ca.bundle_rx();
        let stream = futures_util::StreamExt::take_until(
            tokio_stream::wrappers::WatchStream::new(rx).map(|view| Ok(bundle_to_wire(&view))),
            self.shutdown.clone().cancelled_owned(),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
