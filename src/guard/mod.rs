//! The auth guard: a tower layer that lets no call reach a gRPC handler until its bearer token has been
//! validated.
//!
//! Build a [`Guard`] once, with the way it should check tokens, and wrap only the service you want to
//! protect, so health and reflection stay open:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use watchword::guard::{Guard, Policy};
//! # use watchword::pb::posts::v1::posts_service_server::{PostsService, PostsServiceServer};
//! # async fn demo(my_service: impl PostsService) -> Result<(), Box<dyn std::error::Error>> {
//! let guard = Guard::builder("http://127.0.0.1:50051")
//!     .timeout(Duration::from_secs(2))
//!     .cached(Duration::from_secs(5), 100_000) // or .remote(), or .local(Duration::from_secs(10))
//!     .policy(Policy::AnyAuthenticated)
//!     .build()?;
//! let posts = guard.layer(PostsServiceServer::new(my_service));
//! let router = tonic::transport::Server::builder().add_service(posts);
//! # Ok(()) }
//! ```
//!
//! Handlers then read the caller with [`identity`]. The guard is async (unlike tonic's `Interceptor`),
//! so it can ask auth-svc over the network without blocking a runtime thread.
//!
//! The three modes ([`Mode`]) share one HTTP/2 channel to auth-svc for Validate, the revocation feed
//! and JWKS fetches:
//! - `remote` ([`RemoteValidator`]): ask auth-svc's Validate about every call;
//! - `cached` (`cache.rs`): the same, reusing verdicts while the revocation feed (`feed.rs`) is live;
//! - `local` (`local.rs`): verify signatures with auth-svc's published keys, honouring the same feed.
//!
//! [`AuthLayer`] with a [`Validator`] of your own remains for anything else.

mod cache;
mod feed;
mod identity;
mod layer;
mod local;
mod remote;

use std::{future::Future, time::Duration};

use tonic::transport::{Channel, Endpoint};

use crate::transport::{ClientTls, TlsError};
use crate::{
    metrics::Metrics,
    observe::{Methods, ObservedChannel},
};

pub use identity::{GuardError, Identity, identity};
pub use layer::{AuthLayer, Policy, Require, RequireAuth};
pub use remote::RemoteValidator;

use self::{
    cache::{CacheLimits, CachingValidator, MAX_FLIGHTS},
    feed::RevocationFeed,
    local::{Jwks, LocalValidator},
};

/// What [`GuardBuilder::timeout`] defaults to: the longest wait for auth-svc before `UNAVAILABLE`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a [`Guard`] checks tokens. All three give the same answers with the same reasons, and fail closed
/// (`UNAVAILABLE`) when they cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ask auth-svc's Validate about every call.
    Remote,
    /// Ask auth-svc, and reuse a successful verdict for up to `ttl` (never past the token's `exp`) while
    /// the revocation feed is live; at most `max_entries` verdicts are kept. A `ttl` of zero is `Remote`.
    Cached { ttl: Duration, max_entries: usize },
    /// Verify signatures with auth-svc's published keys (JWKS), fetched at start, every
    /// `refetch_interval` (at least a second apart), and, at most that often, for a token naming an unknown
    /// key; ask auth-svc whenever the revocation feed is down or the key is still unknown.
    Local { refetch_interval: Duration },
}

/// The guard: validates each call's bearer token in the configured [`Mode`], checks the [`Policy`], and
/// hands handlers the caller's [`Identity`]. Wrap a service with [`Guard::layer`] (or use it as a
/// `tower::Layer`).
///
/// The background tasks of the cached and local modes (revocation feed, key refresh) belong to the guard:
/// they run while the guard or any service it wrapped is alive, and stop when the last of them is dropped.
#[derive(Clone)]
pub struct Guard {
    layer: AuthLayer<GuardValidator>,
}

impl Guard {
    /// A guard that reaches auth-svc at `auth_url` (e.g. `http://127.0.0.1:50051`), connecting on first use
    /// and reconnecting by itself, so a service can start (and keep running) while auth-svc is down.
    /// An `https://` URL is reached over TLS: with the system's trust anchors, or as
    /// [`GuardBuilder::tls`] says.
    pub fn builder(auth_url: impl Into<String>) -> GuardBuilder {
        GuardBuilder::new(AuthService::Url(auth_url.into()))
    }

    /// A guard that reaches auth-svc through `endpoint`, as configured (TLS, for example); connects on
    /// first use.
    pub fn builder_with_endpoint(endpoint: Endpoint) -> GuardBuilder {
        GuardBuilder::new(AuthService::Endpoint(Box::new(endpoint)))
    }

    /// A guard that reaches auth-svc over an existing `channel`.
    pub fn builder_with_channel(channel: Channel) -> GuardBuilder {
        GuardBuilder::new(AuthService::Channel(channel))
    }

    /// Wraps `service` (one generated `...Server`) so that none of its methods runs without a validated
    /// token that the policy admits.
    pub fn layer<S>(&self, service: S) -> RequireAuth<S> {
        tower::Layer::layer(&self.layer, service)
    }
}

impl<S> tower::Layer<S> for Guard {
    type Service = RequireAuth<S>;

    fn layer(&self, service: S) -> RequireAuth<S> {
        Guard::layer(self, service)
    }
}

enum AuthService {
    Url(String),
    Endpoint(Box<Endpoint>),
    Channel(Channel),
}

/// Configures a [`Guard`]; see [`Guard::builder`].
#[must_use]
pub struct GuardBuilder {
    auth: AuthService,
    tls: Option<ClientTls>,
    timeout: Duration,
    mode: Mode,
    policy: Policy,
    metrics: Metrics,
}

impl GuardBuilder {
    fn new(auth: AuthService) -> Self {
        Self {
            auth,
            tls: None,
            timeout: DEFAULT_TIMEOUT,
            mode: Mode::Remote,
            policy: Policy::AnyAuthenticated,
            metrics: Metrics::disabled(),
        }
    }

    /// Where to count decisions, cache use, the revocation stream and the calls to auth-svc (see the
    /// README's metrics table); nothing is counted unless set.
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    /// The longest the guard waits for auth-svc (connecting included) before failing a call with
    /// `UNAVAILABLE`; [`DEFAULT_TIMEOUT`] unless set.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How tokens are checked; [`Mode::Remote`] unless set.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// [`Mode::Remote`]: ask auth-svc about every call.
    pub fn remote(self) -> Self {
        self.mode(Mode::Remote)
    }

    /// [`Mode::Cached`]: ask auth-svc, reuse its verdicts for up to `ttl`, keep at most `max_entries`.
    pub fn cached(self, ttl: Duration, max_entries: usize) -> Self {
        self.mode(Mode::Cached { ttl, max_entries })
    }

    /// [`Mode::Local`]: verify with auth-svc's published keys, refetched every `refetch_interval`.
    pub fn local(self, refetch_interval: Duration) -> Self {
        self.mode(Mode::Local { refetch_interval })
    }

    /// How to reach an `https://` auth-svc URL: which CAs to trust and the client certificate to present
    /// (mutual TLS; auth-svc may require one for Validate and WatchRevocations). Without it an `https://`
    /// URL trusts the system's roots and presents no certificate. Only for [`Guard::builder`]'s URL; an
    /// `http://` URL with TLS is refused at [`GuardBuilder::build`].
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Which roles may call which methods; [`Policy::AnyAuthenticated`] unless set.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The guard, with its background tasks started. Must be called within a Tokio runtime.
    pub fn build(self) -> Result<Guard, GuardBuildError> {
        if self.tls.is_some() && !matches!(self.auth, AuthService::Url(_)) {
            // The endpoint or channel given is used as it is: TLS set here would be silently ignored.
            return Err(GuardBuildError::Tls {
                url: String::new(),
                cause: Box::new(TlsError::Config(
                    "GuardBuilder::tls applies to Guard::builder's URL only; configure the endpoint or channel itself"
                        .to_owned(),
                )),
            });
        }
        let channel = match self.auth {
            AuthService::Url(url) => auth_channel(url, self.tls, self.timeout)?,
            AuthService::Endpoint(endpoint) => endpoint.connect_lazy(),
            AuthService::Channel(channel) => channel,
        };
        // Every call to auth-svc is counted and traced (its trace context sent along) on the one channel.
        let auth_methods = Methods::from_descriptor_sets(&[crate::pb::auth::v1::FILE_DESCRIPTOR_SET]);
        let channel = ObservedChannel::new(channel, &self.metrics, &auth_methods);
        // Every mode asks auth-svc when it cannot decide alone; all share the one channel.
        let remote = RemoteValidator::observed(channel.clone(), self.timeout);
        let validator = match self.mode {
            Mode::Remote => Modes::Remote(remote),
            Mode::Cached { ttl, .. } if ttl.is_zero() => Modes::Remote(remote),
            Mode::Cached { ttl, max_entries } => {
                let (feed, feed_task) = RevocationFeed::spawn(channel, &self.metrics);
                let limits = CacheLimits {
                    ttl,
                    max_entries,
                    max_flights: MAX_FLIGHTS,
                    timeout: self.timeout,
                };
                Modes::Cached {
                    cache: CachingValidator::new(remote, feed, limits).with_metrics(&self.metrics),
                    _feed: feed_task,
                }
            }
            Mode::Local { refetch_interval } => {
                let (feed, feed_task) = RevocationFeed::spawn(channel.clone(), &self.metrics);
                let jwks = Jwks::new(channel, self.timeout);
                Modes::Local {
                    local: LocalValidator::new(remote, feed, jwks, refetch_interval),
                    _feed: feed_task,
                }
            }
        };
        Ok(Guard {
            layer: AuthLayer::new(GuardValidator(validator))
                .with_policy(self.policy)
                .with_metrics(&self.metrics),
        })
    }
}

/// The channel to auth-svc at `url`: TLS for `https://` (as `tls` says, or the system's roots), plain
/// HTTP/2 for `http://`.
fn auth_channel(url: String, tls: Option<ClientTls>, timeout: Duration) -> Result<Channel, GuardBuildError> {
    let is_https = url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    if !is_https {
        if tls.is_some() {
            return Err(GuardBuildError::Tls {
                url,
                cause: Box::new(TlsError::Config(
                    "TLS is configured, so the auth-svc URL must be https://".to_owned(),
                )),
            });
        }
        return match remote::endpoint(&url, timeout) {
            Ok(endpoint) => Ok(endpoint.connect_lazy()),
            Err(cause) => Err(GuardBuildError::AuthUrl { url, cause }),
        };
    }
    let tls = match tls {
        Some(tls) => tls,
        None => ClientTls::builder()
            .build()
            .map_err(|cause| GuardBuildError::Tls {
                url: url.clone(),
                cause: Box::new(cause),
            })?,
    };
    tls.connect_lazy(&url, |endpoint| remote::configure(endpoint, timeout))
        .map_err(|cause| GuardBuildError::Tls {
            url,
            cause: Box::new(cause),
        })
}

/// Why a [`Guard`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardBuildError {
    #[error("auth-svc url {url:?}: {cause}")]
    AuthUrl {
        url: String,
        cause: tonic::transport::Error,
    },
    #[error("auth-svc url {url:?}: {cause}")]
    Tls { url: String, cause: Box<TlsError> },
}

/// The validator a [`Guard`] was built with: one of the [`Mode`]s, with the background tasks it needs.
pub struct GuardValidator(Modes);

enum Modes {
    Remote(RemoteValidator),
    // The feed tasks are held, not read: dropping the validator stops them.
    Cached {
        cache: CachingValidator<RemoteValidator>,
        _feed: OwnedTask,
    },
    Local {
        local: LocalValidator,
        _feed: OwnedTask,
    },
}

impl Validator for GuardValidator {
    async fn validate(&self, token: &str) -> Result<Identity, GuardError> {
        match &self.0 {
            Modes::Remote(remote) => remote.validate(token).await,
            Modes::Cached { cache, .. } => cache.validate(token).await,
            Modes::Local { local, .. } => local.validate(token).await,
        }
    }
}

/// A background task of the guard, stopped when its owner is dropped.
pub(crate) struct OwnedTask(tokio::task::AbortHandle);

impl OwnedTask {
    pub(crate) fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(task.abort_handle())
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Something that turns a bearer token into an [`Identity`].
pub trait Validator: Send + Sync + 'static {
    /// Validates `token`. Must never return `Ok` for a token it could not check.
    fn validate(&self, token: &str) -> impl Future<Output = Result<Identity, GuardError>> + Send;
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::task::AbortHandle;
    use tower::ServiceExt as _;

    use super::*;

    /// Where nobody answers: connections are refused at once.
    const NOBODY: &str = "http://127.0.0.1:1";

    impl Guard {
        fn tasks(&self) -> Vec<AbortHandle> {
            match &self.layer.validator().0 {
                Modes::Remote(_) => vec![],
                Modes::Cached { _feed, .. } => vec![_feed.0.clone()],
                Modes::Local { local, _feed } => vec![_feed.0.clone(), local.refresh_task().0.clone()],
            }
        }
    }

    fn service() -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|_request: http::Request<()>| async { Ok(http::Response::new(())) })
    }

    /// The `grpc-status` the guard answers a ListPosts call carrying `authorization` with.
    async fn status(guard: &Guard, authorization: Option<&str>) -> String {
        let mut request = http::Request::builder().uri("/posts.v1.PostsService/ListPosts");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = guard
            .layer(service())
            .oneshot(request.body(()).unwrap())
            .await
            .unwrap();
        let status = response.headers().get("grpc-status").expect("the guard answered");
        status.to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn every_mode_fails_closed_when_auth_svc_cannot_be_reached() {
        for mode in [
            Mode::Remote,
            Mode::Cached {
                ttl: Duration::from_secs(5),
                max_entries: 10,
            },
            Mode::Local {
                refetch_interval: Duration::from_secs(10),
            },
        ] {
            let guard = Guard::builder(NOBODY)
                .timeout(Duration::from_millis(200))
                .mode(mode)
                .build()
                .unwrap();
            assert_eq!(status(&guard, Some("Bearer abc.def.ghi")).await, "14", "{mode:?}");
            assert_eq!(status(&guard, None).await, "16", "{mode:?}");
        }
    }

    #[tokio::test]
    async fn tls_is_refused_where_it_would_go_unused() {
        let tls = || {
            ClientTls::from_config(
                rustls::ClientConfig::builder_with_provider(crate::transport::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        };
        let plaintext = Guard::builder(NOBODY).tls(tls()).build().err().expect("refused");
        assert!(matches!(plaintext, GuardBuildError::Tls { .. }), "{plaintext}");
        let endpoint = Endpoint::from_static("https://127.0.0.1:1");
        let error = Guard::builder_with_endpoint(endpoint)
            .tls(tls())
            .build()
            .err()
            .expect("refused");
        assert!(error.to_string().contains("URL only"), "{error}");
        // An https URL with TLS is accepted (connecting happens on first use).
        assert!(Guard::builder("https://127.0.0.1:1").tls(tls()).build().is_ok());
    }

    #[tokio::test]
    async fn an_auth_url_that_is_no_uri_is_refused() {
        let error = Guard::builder("not a url").build().err().expect("refused");
        assert!(matches!(error, GuardBuildError::AuthUrl { .. }), "{error}");
    }

    #[tokio::test]
    async fn background_tasks_run_while_the_guard_or_a_service_it_wrapped_lives() {
        let guard = Guard::builder(NOBODY)
            .local(Duration::from_secs(10))
            .build()
            .unwrap();
        let tasks = guard.tasks();
        assert_eq!(tasks.len(), 2, "revocation feed and key refresh");
        let wrapped = guard.layer(service());
        drop(guard);
        tokio::task::yield_now().await;
        assert!(
            tasks.iter().all(|task| !task.is_finished()),
            "the wrapped service still needs them"
        );
        drop(wrapped);
        for _ in 0..100 {
            if tasks.iter().all(AbortHandle::is_finished) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("background tasks still running after the guard and its services were dropped");
    }

    #[tokio::test]
    async fn a_zero_ttl_caches_nothing_and_starts_no_task() {
        let guard = Guard::builder(NOBODY).cached(Duration::ZERO, 10).build().unwrap();
        assert!(matches!(guard.layer.validator().0, Modes::Remote(_)));
        assert!(guard.tasks().is_empty());
    }
}
