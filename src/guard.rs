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
    reason::{self, Reason},
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
    /// The session the token belongs to (`sid`).
    pub session_id: String,
    /// When the token was issued.
    pub issue_time: SystemTime,
    /// When the token stops being valid.
    pub expire_time: SystemTime,
    /// The key that signed the token (`kid`), so revoking a key can deny its tokens.
    pub key_id: String,
}

impl From<crate::token::Claims> for Identity {
    fn from(claims: crate::token::Claims) -> Self {
        Self {
            user_id: claims.subject,
            username: claims.username,
            roles: claims.roles,
            token_id: claims.token_id,
            session_id: claims.session_id,
            issue_time: claims.issue_time,
            expire_time: claims.expire_time,
            key_id: claims.key_id,
        }
    }
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
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    /// The metadata held no usable bearer token; auth-svc was not asked.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// auth-svc looked at the token and refused it, for this reason.
    #[error("{message}")]
    Rejected { reason: Reason, message: String },
    /// The token is fine but the policy does not let its roles call this method.
    #[error("this call requires one of the roles {required:?}")]
    RoleRequired { required: &'static [&'static str] },
    /// No verdict could be had (auth-svc down, slow or erroring): fail closed.
    #[error("authentication service unavailable")]
    Unavailable,
}

impl From<GuardError> for Status {
    fn from(error: GuardError) -> Self {
        let message = error.to_string();
        match error {
            GuardError::Credentials(CredentialsError::Missing) => reason::status(
                Code::Unauthenticated,
                Reason::TokenMissing,
                "missing authorization: Bearer <token> metadata",
            ),
            GuardError::Credentials(_) => {
                reason::status(Code::Unauthenticated, Reason::TokenMalformed, message)
            }
            GuardError::Rejected { reason, message } => {
                reason::status(Code::Unauthenticated, reason, message)
            }
            GuardError::RoleRequired { .. } => {
                reason::status(Code::PermissionDenied, Reason::RoleRequired, message)
            }
            GuardError::Unavailable => reason::status(Code::Unavailable, Reason::AuthUnavailable, message),
        }
    }
}

/// Which roles may call which methods of a guarded service.
///
/// Declared once, as a table, next to the service it protects. A method missing from the table is
/// refused (`PERMISSION_DENIED`): adding an RPC without deciding who may call it fails closed.
#[derive(Debug, Clone, Copy)]
pub enum Policy {
    /// Any holder of a valid token may call any method.
    AnyAuthenticated,
    /// `(full method path, roles of which the caller needs at least one)`.
    Table(&'static [(&'static str, &'static [&'static str])]),
}

impl Policy {
    fn check(&self, path: &str, identity: &Identity) -> Result<(), GuardError> {
        let Self::Table(table) = self else {
            return Ok(());
        };
        let required = table
            .iter()
            .find(|(method, _)| *method == path)
            .map_or(&[][..], |(_, roles)| *roles);
        if required.iter().any(|role| identity.has_role(role)) {
            Ok(())
        } else {
            Err(GuardError::RoleRequired { required })
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
    channel: Channel,
    timeout: Duration,
}

impl RemoteValidator {
    /// The channel to auth-svc, for the revocation feed and JWKS fetches to share.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The bound on each call to auth-svc.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Uses an existing channel; `timeout` bounds each Validate call end to end.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: AuthServiceClient::new(channel.clone()),
            channel,
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
                // Pass auth-svc's reason on, so the client can tell "refresh" from "log in again".
                return Err(GuardError::Rejected {
                    reason: reason::of(&status).unwrap_or(Reason::TokenInvalid),
                    message: status.message().to_owned(),
                });
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
        let time = |t: Option<prost_types::Timestamp>| {
            t.and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        Ok(Identity {
            session_id: claims.session_id,
            user_id: claims.subject,
            username: claims.username,
            roles: claims.roles,
            token_id: claims.token_id,
            issue_time: time(claims.issue_time),
            expire_time: time(claims.expire_time),
            key_id: claims.key_id,
        })
    }
}

/// Layer that wraps a service in [`RequireAuth`].
pub struct AuthLayer<V> {
    validator: Arc<V>,
    policy: Policy,
}

impl<V> AuthLayer<V> {
    /// A guard that admits any valid token; see [`AuthLayer::with_policy`] to require roles.
    pub fn new(validator: V) -> Self {
        Self {
            validator: Arc::new(validator),
            policy: Policy::AnyAuthenticated,
        }
    }

    /// Checks each call's method against `policy` after validating its token.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
}

impl<V> Clone for AuthLayer<V> {
    fn clone(&self) -> Self {
        Self {
            validator: Arc::clone(&self.validator),
            policy: self.policy,
        }
    }
}

impl<S, V> Layer<S> for AuthLayer<V> {
    type Service = RequireAuth<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuth {
            inner,
            validator: Arc::clone(&self.validator),
            policy: self.policy,
        }
    }
}

/// A service that validates the bearer token of every request before calling `inner`.
pub struct RequireAuth<S, V> {
    inner: S,
    validator: Arc<V>,
    policy: Policy,
}

impl<S: Clone, V> Clone for RequireAuth<S, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            validator: Arc::clone(&self.validator),
            policy: self.policy,
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
        let policy = self.policy;
        Box::pin(async move {
            let verdict = match bearer_token(request.headers()) {
                Ok(token) => validator.validate(token).await,
                Err(e) => Err(GuardError::Credentials(e)),
            };
            let verdict = verdict.and_then(|identity| {
                policy.check(request.uri().path(), &identity)?;
                Ok(identity)
            });
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
