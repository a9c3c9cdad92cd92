//! The auth guard: a tower layer that lets no call reach a gRPC handler until its bearer token has been
//! validated.
//!
//! Wrap only the service you want to protect, so health and reflection stay open:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use watchword::guard::{AuthLayer, RemoteValidator};
//! # use watchword::pb::posts::v1::posts_service_server::{PostsService, PostsServiceServer};
//! # fn demo(my_service: impl PostsService) -> Result<(), Box<dyn std::error::Error>> {
//! use tower::Layer as _;
//!
//! let validator = RemoteValidator::connect_lazy("http://127.0.0.1:50051", Duration::from_secs(2))?;
//! let guarded = AuthLayer::new(validator).layer(PostsServiceServer::new(my_service));
//! let router = tonic::transport::Server::builder().add_service(guarded);
//! # Ok(()) }
//! ```
//!
//! Handlers then read the caller with [`identity`]. The guard is async (unlike tonic's `Interceptor`),
//! so it can ask auth-svc over the network without blocking a runtime thread.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use tonic::{
    Code, Status,
    server::NamedService,
    transport::{Channel, Endpoint},
};
use tower::{Layer, Service};

use crate::{
    credentials::{CredentialsError, bearer_token},
    pb::auth::v1::{ValidateRequest, auth_service_client::AuthServiceClient},
};

/// The validated caller, inserted into request extensions by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (the token's `sub`).
    pub user_id: String,
    /// The username when the token was issued.
    pub username: String,
    /// Roles granted when the token was issued.
    pub roles: Vec<String>,
    /// The token's `jti`.
    pub token_id: String,
    /// When the token stops being valid.
    pub expire_time: SystemTime,
}

impl Identity {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The caller of a guarded request.
///
/// A missing identity means the service was wired without the guard: that is a server bug, so it is
/// `INTERNAL`, never a default or anonymous user.
pub fn identity<T>(request: &tonic::Request<T>) -> Result<&Identity, Status> {
    request.extensions().get::<Identity>().ok_or_else(|| {
        tracing::error!("guarded handler called without an Identity: is the AuthLayer installed?");
        Status::internal("internal error")
    })
}

/// Why the guard refused a call.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The metadata held no usable bearer token; auth-svc was not asked.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// auth-svc looked at the token and refused it.
    #[error("invalid or expired token")]
    Rejected,
    /// No verdict could be had (auth-svc down, slow or erroring): fail closed.
    #[error("authentication service unavailable")]
    Unavailable,
}

impl From<GuardError> for Status {
    fn from(error: GuardError) -> Self {
        match error {
            GuardError::Credentials(CredentialsError::Missing) => {
                Status::unauthenticated("missing authorization: Bearer <token> metadata")
            }
            GuardError::Credentials(e) => Status::unauthenticated(e.to_string()),
            GuardError::Rejected => Status::unauthenticated("invalid or expired token"),
            GuardError::Unavailable => Status::unavailable("authentication service unavailable"),
        }
    }
}

/// Something that turns a bearer token into an [`Identity`].
pub trait Validator: Send + Sync + 'static {
    /// Validates `token`. Must never return `Ok` for a token it could not check.
    fn validate(&self, token: &str) -> impl Future<Output = Result<Identity, GuardError>> + Send;
}

/// Asks auth-svc's `Validate` RPC about every token, over one shared HTTP/2 channel.
#[derive(Debug, Clone)]
pub struct RemoteValidator {
    client: AuthServiceClient<Channel>,
    timeout: Duration,
}

impl RemoteValidator {
    /// Uses an existing channel; `timeout` bounds each Validate call end to end.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: AuthServiceClient::new(channel),
            timeout,
        }
    }

    /// Connects on first use and reconnects by itself, so a service can start (and keep running) while
    /// auth-svc is down; calls meanwhile fail with `UNAVAILABLE`.
    pub fn connect_lazy(url: &str, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            // Notice a dead auth-svc between calls instead of on the next one.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self::new(channel, timeout))
    }
}

impl Validator for RemoteValidator {
    async fn validate(&self, token: &str) -> Result<Identity, GuardError> {
        let mut request = tonic::Request::new(ValidateRequest {
            token: token.to_owned(),
        });
        // Tell auth-svc our deadline too, so it can give up as soon as we do.
        request.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let response = tokio::time::timeout(self.timeout, client.validate(request)).await;
        let claims = match response {
            Ok(Ok(response)) => response.into_inner().claims,
            Ok(Err(status)) if status.code() == Code::Unauthenticated => {
                return Err(GuardError::Rejected);
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "auth-svc Validate failed");
                return Err(GuardError::Unavailable);
            }
            Err(_elapsed) => {
                tracing::warn!(timeout = ?self.timeout, "auth-svc Validate timed out");
                return Err(GuardError::Unavailable);
            }
        };
        let claims = claims.ok_or_else(|| {
            tracing::warn!("auth-svc Validate answered OK without claims");
            GuardError::Unavailable
        })?;
        Ok(Identity {
            user_id: claims.subject,
            username: claims.username,
            roles: claims.roles,
            token_id: claims.token_id,
            expire_time: claims
                .expire_time
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }
}

/// Layer that wraps a service in [`RequireAuth`].
pub struct AuthLayer<V> {
    validator: Arc<V>,
}

impl<V> AuthLayer<V> {
    pub fn new(validator: V) -> Self {
        Self {
            validator: Arc::new(validator),
        }
    }
}

impl<V> Clone for AuthLayer<V> {
    fn clone(&self) -> Self {
        Self {
            validator: Arc::clone(&self.validator),
        }
    }
}

impl<S, V> Layer<S> for AuthLayer<V> {
    type Service = RequireAuth<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuth {
            inner,
            validator: Arc::clone(&self.validator),
        }
    }
}

/// A service that validates the bearer token of every request before calling `inner`.
pub struct RequireAuth<S, V> {
    inner: S,
    validator: Arc<V>,
}

impl<S: Clone, V> Clone for RequireAuth<S, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            validator: Arc::clone(&self.validator),
        }
    }
}

// Keeps the wrapped service's gRPC name, so the router sends `posts.v1.PostsService/*` here and nothing else.
impl<S: NamedService, V> NamedService for RequireAuth<S, V> {
    const NAME: &'static str = S::NAME;
}

impl<S, V, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequireAuth<S, V>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
    V: Validator,
{
    type Response = http::Response<ResBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // `self.inner` is the clone that was driven to ready; take it and leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let validator = Arc::clone(&self.validator);
        Box::pin(async move {
            let verdict = match bearer_token(request.headers()) {
                Ok(token) => validator.validate(token).await,
                Err(e) => Err(GuardError::Credentials(e)),
            };
            match verdict {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Err(error) => {
                    tracing::debug!(%error, "guard refused call");
                    Ok(Status::from(error).into_http())
                }
            }
        })
    }
}
