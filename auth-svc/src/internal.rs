//! Who may call the internal RPCs, the ones services make to each other: decided here, once, for every
//! method in [`INTERNAL_METHODS`].
//!
//! Without `--tls-client-ca` they are open like any other RPC (and auth-svc warns about it when it
//! serves off loopback). With it, a call needs a client certificate, which the TLS handshake has already
//! checked against that CA (`CLIENT_CERT_REQUIRED` otherwise), and with `--internal-clients` one valid
//! for one of those DNS names (`CALLER_NOT_ALLOWED` otherwise). End-user RPCs never need a certificate.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls::pki_types::{CertificateDer, ServerName};
use tonic::{
    Code, Status,
    server::NamedService,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::Service;
use watchword::{
    reason::{self, Reason},
    transport::tls::{certificate_dns_names, valid_for},
};

/// The RPCs only other services (and gateways) call. A new one is added here and nowhere else; its
/// service is wrapped with [`InternalCallers::layer`].
pub const INTERNAL_METHODS: &[&str] = &[
    "/auth.v1.AuthService/Validate",
    "/auth.v1.AuthService/WatchRevocations",
    "/envoy.service.auth.v3.Authorization/Check",
];

/// The rule for [`INTERNAL_METHODS`].
#[derive(Debug, Clone)]
pub enum InternalCallers {
    /// No client CA: anyone may call them.
    Anyone,
    /// A client certificate that chains to the client CA; if `names` is not empty, valid for one of them.
    Certified { names: Arc<[ServerName<'static>]> },
}

impl InternalCallers {
    /// The rule from `--tls-client-ca` (whether one is set) and `--internal-clients`.
    pub fn new(client_ca: bool, internal_clients: &[String]) -> Self {
        if !client_ca {
            return Self::Anyone;
        }
        let names = internal_clients
            .iter()
            .filter_map(|name| ServerName::try_from(name.clone()).ok())
            .collect();
        Self::Certified { names }
    }

    /// Decides a call to `path` made over a connection with `extensions` (where tonic keeps the peer's
    /// certificates, verified by the handshake).
    pub fn check(&self, path: &str, extensions: &http::Extensions) -> Result<(), Status> {
        let Self::Certified { names } = self else {
            return Ok(());
        };
        if !INTERNAL_METHODS.contains(&path) {
            return Ok(());
        }
        let certs = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let Some(leaf) = certs.as_deref().and_then(|certs| certs.first()) else {
            return Err(reason::status(
                Code::Unauthenticated,
                Reason::ClientCertRequired,
                "this RPC is for other services: call it with a client certificate (mutual TLS)",
            ));
        };
        if names.is_empty() || names.iter().any(|name| valid_for(leaf, name)) {
            return Ok(());
        }
        refused(path, leaf);
        Err(reason::status(
            Code::PermissionDenied,
            Reason::CallerNotAllowed,
            "this client certificate names no service allowed to make this call",
        ))
    }

    /// Wraps one generated gRPC service so that every internal method of it is checked before it runs.
    pub fn layer<S>(&self, inner: S) -> RequireInternalCaller<S> {
        RequireInternalCaller {
            inner,
            rule: self.clone(),
        }
    }
}

fn refused(path: &str, leaf: &CertificateDer<'_>) {
    tracing::warn!(
        method = path,
        names = ?certificate_dns_names(leaf),
        "internal RPC refused: the client certificate is not one of --internal-clients"
    );
}

/// A gRPC service whose internal methods need the caller [`InternalCallers`] admits.
#[derive(Clone)]
pub struct RequireInternalCaller<S> {
    inner: S,
    rule: InternalCallers,
}

// The wrapped service's name, so the router sends exactly its methods here.
impl<S: NamedService> NamedService for RequireInternalCaller<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequireInternalCaller<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>, Error = Infallible>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The decision needs no waiting, so the ready inner service is called (or not) right here.
        match self.rule.check(request.uri().path(), request.extensions()) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use watchword::pb::auth::v1 as pb;

    use super::*;

    /// Every listed method exists (in auth.v1, or Envoy's Check as served), so a rename cannot silently
    /// open one.
    #[test]
    fn every_internal_method_is_an_rpc_auth_svc_serves() {
        let sets = [pb::FILE_DESCRIPTOR_SET, &crate::extauthz::descriptor_set()[..]];
        let rpcs: Vec<String> = sets
            .iter()
            .map(|set| prost_types::FileDescriptorSet::decode(*set).unwrap())
            .flat_map(|set| set.file)
            .collect::<Vec<_>>()
            .iter()
            .filter(|f| matches!(f.package(), "auth.v1" | "envoy.service.auth.v3"))
            .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
            .flat_map(|(package, service)| {
                service
                    .method
                    .iter()
                    .map(move |m| format!("/{package}.{}/{}", service.name(), m.name()))
            })
            .collect();
        for method in INTERNAL_METHODS {
            assert!(rpcs.iter().any(|rpc| rpc == method), "{method} is no RPC");
        }
    }

    #[test]
    fn without_a_client_ca_and_for_end_user_rpcs_no_certificate_is_needed() {
        let none = http::Extensions::new();
        assert!(
            InternalCallers::new(false, &[])
                .check(INTERNAL_METHODS[0], &none)
                .is_ok()
        );
        let certified = InternalCallers::new(true, &["posts-svc".to_owned()]);
        assert!(certified.check("/auth.v1.AuthService/Login", &none).is_ok());
        for method in INTERNAL_METHODS {
            let status = certified.check(method, &none).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(reason::of(&status), Some(Reason::ClientCertRequired));
        }
    }
}
