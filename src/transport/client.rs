//! The client side of TLS: how a service (the guard, for one) reaches another over TLS, trusting a CA of
//! your choice or the system's roots, optionally presenting a client certificate that reloads like a
//! server's.
//!
//! tonic's `ClientTlsConfig` loads a client identity once; here the handshake itself is done by our own
//! connector, with a rustls certificate resolver that hands each new connection the pair currently on disk.
//! So that no tonic feature can intercept the `https` scheme, the channel dials an `http://host:port`
//! endpoint through the connector and names the `https://` URL as its origin (what requests carry).

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::{
    TlsError,
    reload::{self, KeyPair, Watched},
    tls::{ALPN_H2, roots},
};

/// How to reach a TLS server: which CAs to trust and which client certificate, if any, to present.
/// Cheap to clone; a client certificate is watched for changes while any clone (or channel made with
/// one) lives.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    _identity: Option<Watched>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("identity", &self._identity.as_ref().map(Watched::pair))
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Start from the system's trust anchors and no client certificate.
    pub fn builder() -> ClientTlsBuilder {
        ClientTlsBuilder::default()
    }

    /// Your own rustls configuration. Its ALPN list is replaced by `h2` (gRPC is HTTP/2 only).
    pub fn from_config(mut config: ClientConfig) -> Self {
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Self {
            config: Arc::new(config),
            _identity: None,
        }
    }

    /// A channel to `url` (`https://host[:port]`, port 443 by default) through this TLS configuration,
    /// connecting on first use and reconnecting by itself. `configure` sets the endpoint's other options
    /// (timeouts, keepalive). The server's certificate must be valid for `host` (a DNS name or an IP
    /// address).
    pub fn connect_lazy(
        &self,
        url: &str,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, TlsError> {
        let bad_url = |message: &str| TlsError::Config(format!("{url:?}: {message}"));
        let uri: Uri = url.parse().map_err(|_| bad_url("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad_url("TLS needs an https:// URL"));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad_url("no host"))?;
        let port = uri.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|_| bad_url("the host is neither a DNS name nor an IP address"))?;
        let origin: Uri = format!("https://{host}:{port}")
            .parse()
            .map_err(|_| bad_url("not a URL"))?;
        let dial = Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(|_| bad_url("not a URL"))?
            .origin(origin);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(crate::server::TCP_KEEPALIVE));
        let connector = TlsConnector {
            http,
            tls: tokio_rustls::TlsConnector::from(Arc::clone(&self.config)),
            name,
            _identity: self._identity.clone(),
        };
        Ok(configure(dial).connect_with_connector_lazy(connector))
    }
}

/// Configures a [`ClientTls`]; see [`ClientTls::builder`].
#[derive(Debug, Default)]
#[must_use]
pub struct ClientTlsBuilder {
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTlsBuilder {
    /// Trust only the CA certificates in this PEM file (instead of the system's roots).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Present this certificate and key (PEM; the key file private to its owner) when the server asks for
    /// one (mutual TLS). Both are read again when they change, like a server's.
    pub fn identity_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Loads everything now (an error names the file at fault) and starts watching the client
    /// certificate, if any. Must be called within a Tokio runtime when a client certificate is given.
    pub fn build(self) -> Result<ClientTls, TlsError> {
        let roots = match &self.ca {
            Some(path) => roots(path)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let (config, identity) = match &self.identity {
            Some((cert, key)) => {
                let watched = KeyPair::watch(cert, key, reload::RELOAD_INTERVAL)?;
                (
                    builder.with_client_cert_resolver(watched.resolver()),
                    Some(watched),
                )
            }
            None => (builder.with_no_client_auth(), None),
        };
        let mut tls = ClientTls::from_config(config);
        tls._identity = identity;
        Ok(tls)
    }
}

/// The system's trust anchors (the OS store, as `rustls-native-certs` finds it: on Linux the
/// distribution's bundle, which includes CAs the operator installed there).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(ToString::to_string).unwrap_or_default();
        return Err(TlsError::Config(format!(
            "no trust anchors in the system store ({why}); name a CA file instead"
        )));
    }
    Ok(roots)
}

/// Checks a CA file for a client, as [`ClientTlsBuilder::ca_file`] will read it.
pub fn check_ca_file(path: &Path) -> Result<(), TlsError> {
    roots(path).map(drop)
}

/// TCP (hyper's connector: resolution, connect, socket options), then the TLS handshake.
#[derive(Clone)]
struct TlsConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    // Keeps the client certificate watched while a channel that presents it lives.
    _identity: Option<Watched>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = tower::Service::call(&mut self.http, uri);
        let (tls, name) = (self.tls.clone(), self.name.clone());
        Box::pin(async move {
            let tcp = tcp.await?.into_inner();
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}
