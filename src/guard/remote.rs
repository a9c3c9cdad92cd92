//! Remote mode: ask auth-svc's `Validate` about every token.

use std::time::{Duration, SystemTime};

use tonic::{
    Code,
    transport::{Channel, Endpoint},
};

use super::{GuardError, Identity, Validator};
use crate::{
    observe::ObservedChannel,
    pb::auth::v1::{ValidateRequest, auth_service_client::AuthServiceClient},
    reason::{self, Reason},
};

/// How the guard reaches auth-svc at `url`: connect within `timeout`, and keep the connection checked.
pub(crate) fn endpoint(url: &str, timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(configure(Endpoint::from_shared(url.to_owned())?, timeout))
}

/// The guard's options for its channel to auth-svc, plaintext or TLS.
pub(crate) fn configure(endpoint: Endpoint, timeout: Duration) -> Endpoint {
    endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        // Notice a dead auth-svc between calls instead of on the next one.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
}

/// Asks auth-svc's `Validate` RPC about every token, over one shared HTTP/2 channel.
#[derive(Debug, Clone)]
pub struct RemoteValidator {
    client: AuthServiceClient<ObservedChannel>,
    timeout: Duration,
}

impl RemoteValidator {
    /// Uses an existing channel; `timeout` bounds each Validate call end to end. Calls are traced (their
    /// context sent to auth-svc), not counted; a [`super::Guard`] built with metrics counts them.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self::observed(ObservedChannel::unmetered(channel), timeout)
    }

    pub(crate) fn observed(channel: ObservedChannel, timeout: Duration) -> Self {
        Self {
            client: AuthServiceClient::new(channel),
            timeout,
        }
    }

    /// Connects on first use and reconnects by itself, so a service can start (and keep running) while
    /// auth-svc is down; calls meanwhile fail with `UNAVAILABLE`. Must be called within a Tokio runtime.
    pub fn connect_lazy(url: &str, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        Ok(Self::new(endpoint(url, timeout)?.connect_lazy(), timeout))
    }
}

/// auth-svc refused *this service* (mutual TLS), not the token it asked about.
fn is_refused_service(status: &tonic::Status) -> bool {
    matches!(
        reason::of(status),
        Some(Reason::ClientCertRequired | Reason::CallerNotAllowed)
    )
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
            Ok(Err(status)) if is_refused_service(&status) => {
                // Not the caller's fault: auth-svc does not take this service for one of its clients.
                tracing::error!(
                    code = ?status.code(),
                    message = status.message(),
                    "auth-svc refused this service's client certificate: check the guard's TLS identity \
                     and auth-svc's --tls-client-ca and --internal-clients"
                );
                return Err(GuardError::Unavailable);
            }
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
