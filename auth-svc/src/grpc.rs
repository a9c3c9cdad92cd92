//! The gRPC handlers: protobuf in, one use case, protobuf out. Nothing here decides anything.

use std::{pin::Pin, sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use watchword::{
    credentials::{CredentialsError, basic_credentials, bearer_token},
    pagination,
    pb::auth::v1::{self as pb, auth_service_server::AuthService},
};

use crate::{
    accounts::{Login, Peer},
    admin::AdminCaller,
    apikeys::CreateKey,
    app::App,
    audit::{AuditEvent, AuditKind, AuditQuery, Origin},
    domain::{
        ApiKey, Revocation, Session, Target, User, parse_api_key_name, parse_id, parse_roles, parse_user_id,
        user_agent,
    },
    error::AuthError,
    keys::{Claims, IssuedToken, Jwks, TokenError},
    revocations::Event,
    sessions::LogoutBy,
};

pub struct AuthApi {
    app: Arc<App>,
    /// Becomes `true` when the server starts shutting down, so endless streams end and draining is quick.
    stopping: watch::Receiver<bool>,
}

impl AuthApi {
    pub fn new(app: Arc<App>, stopping: watch::Receiver<bool>) -> Self {
        Self { app, stopping }
    }

    /// The caller of an admin RPC: a valid bearer token whose account is an admin *now*.
    async fn admin(&self, metadata: &MetadataMap) -> Result<AdminCaller, AuthError> {
        let caller = self.app.sessions.authenticate(bearer(metadata)?).await?;
        self.app.admin.require_admin(&caller).await
    }

    /// The caller: a valid bearer token (signature and claims, a live session, an enabled user).
    async fn caller(&self, metadata: &MetadataMap) -> Result<Claims, AuthError> {
        self.app.sessions.authenticate(bearer(metadata)?).await
    }

    /// Where the call came from, for the audit log.
    fn origin<T>(&self, request: &Request<T>) -> Origin {
        peer(request).origin(&self.app.proxies)
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AuthService for AuthApi {
    #[tracing::instrument(skip_all)]
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        let peer = peer(&request);
        let pb::RegisterRequest { username, password } = request.into_inner();
        let user = self.app.accounts.register(&username, password, &peer).await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_to_pb(user)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let peer = peer(&request);
        let user_agent = user_agent_of(request.metadata());
        let (username, password, device_token) = login_credentials(request)?;
        let login = Login {
            username,
            password,
            device_token: (!device_token.is_empty()).then_some(device_token),
            peer,
            user_agent,
        };
        let done = self.app.accounts.login(login).await?;
        let IssuedToken { token, claims } = done.access;
        Ok(Response::new(pb::LoginResponse {
            access_token: token,
            token_type: "Bearer".to_owned(),
            expires_in: self.expires_in(),
            expire_time: Some(claims.expire_time.into()),
            refresh_token: done.refresh_token,
            session_id: done.session_id,
            refresh_expire_time: Some(done.refresh_expire_time.into()),
            device_token: done.device_token,
        }))
    }

    async fn validate(&self, request: Request<pb::ValidateRequest>) -> Reply<pb::ValidateResponse> {
        let token = match request.get_ref().token.as_str() {
            "" => bearer(request.metadata())?,
            token => token,
        };
        let claims = self.app.sessions.authenticate(token).await?;
        Ok(Response::new(pb::ValidateResponse {
            claims: Some(claims_to_pb(claims)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Reply<pb::RefreshResponse> {
        let origin = self.origin(&request);
        let refreshed = self
            .app
            .sessions
            .refresh(&request.get_ref().refresh_token, origin)
            .await?;
        Ok(Response::new(pb::RefreshResponse {
            access_token: refreshed.access.token,
            refresh_token: refreshed.refresh_token,
            expires_in: self.expires_in(),
            expire_time: Some(refreshed.access.claims.expire_time.into()),
            token_type: "Bearer".to_owned(),
            refresh_expire_time: Some(refreshed.refresh_expire_time.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        let by = match bearer_token(request.metadata().as_ref()) {
            Ok(token) => LogoutBy::AccessToken(token),
            Err(CredentialsError::Missing) => LogoutBy::RefreshToken(&request.get_ref().refresh_token),
            Err(_) => return Err(AuthError::Token(TokenError::Malformed).into()),
        };
        self.app.sessions.logout(by, self.origin(&request)).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn set_user_roles(
        &self,
        request: Request<pb::SetUserRolesRequest>,
    ) -> Reply<pb::SetUserRolesResponse> {
        let admin = self.admin(request.metadata()).await?;
        let origin = self.origin(&request);
        let pb::SetUserRolesRequest { user_id, roles } = request.into_inner();
        let (user_id, roles) = (parse_user_id(&user_id)?, parse_roles(roles)?);
        let user = self.app.admin.set_roles(&admin, user_id, roles, origin).await?;
        Ok(Response::new(pb::SetUserRolesResponse {
            user: Some(user_to_pb(user)),
        }))
    }

    async fn list_users(&self, request: Request<pb::ListUsersRequest>) -> Reply<pb::ListUsersResponse> {
        let admin = self.admin(request.metadata()).await?;
        let pb::ListUsersRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let size = pagination::page_size(page_size)
            .ok_or_else(|| AuthError::invalid("page_size", "must not be negative"))?;
        let after = decode_user_page_token(&page_token)?;
        let mut users = self.app.admin.list_users(&admin, after, size + 1).await?;
        let next_page_token = if users.len() > size {
            users.truncate(size);
            users
                .last()
                .map(|u| encode_user_page_token(&u.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(user_to_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn disable_user(&self, request: Request<pb::DisableUserRequest>) -> Reply<pb::DisableUserResponse> {
        let admin = self.admin(request.metadata()).await?;
        let user_id = parse_user_id(&request.get_ref().user_id)?;
        let user = self
            .app
            .admin
            .disable_user(&admin, user_id, self.origin(&request))
            .await?;
        Ok(Response::new(pb::DisableUserResponse {
            user: Some(user_to_pb(user)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn unlock_user(&self, request: Request<pb::UnlockUserRequest>) -> Reply<pb::UnlockUserResponse> {
        let admin = self.admin(request.metadata()).await?;
        let user_id = parse_user_id(&request.get_ref().user_id)?;
        let user = self
            .app
            .admin
            .unlock_user(&admin, &user_id, self.origin(&request))
            .await?;
        Ok(Response::new(pb::UnlockUserResponse {
            user: Some(user_to_pb(user)),
        }))
    }

    type WatchRevocationsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchRevocationsResponse, Status>> + Send + 'static>>;

    async fn watch_revocations(
        &self,
        _request: Request<pb::WatchRevocationsRequest>,
    ) -> Reply<Self::WatchRevocationsStream> {
        let window = self.app.keys.revocation_window();
        let events = self.app.hub.subscribe(self.stopping.clone())?;
        let events = events.map(move |event| match event {
            Ok(Event::Revoked(revocation)) => Ok(revocation_to_pb(revocation, window)),
            Ok(Event::Heartbeat) => Ok(pb::WatchRevocationsResponse::default()),
            Err(error) => Err(Status::from(error)),
        });
        Ok(Response::new(Box::pin(events)))
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Reply<pb::RotateSigningKeyResponse> {
        let admin = self.admin(request.metadata()).await?;
        let immediate = request.get_ref().immediate;
        let (kid, sign_time) = self
            .app
            .keys
            .rotate(&admin, immediate, self.origin(&request))
            .await?;
        Ok(Response::new(pb::RotateSigningKeyResponse {
            kid,
            sign_time: Some(sign_time.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_signing_key(
        &self,
        request: Request<pb::RevokeSigningKeyRequest>,
    ) -> Reply<pb::RevokeSigningKeyResponse> {
        let admin = self.admin(request.metadata()).await?;
        let kid = &request.get_ref().kid;
        if kid.is_empty() {
            return Err(AuthError::invalid("kid", "required").into());
        }
        let signing_kid = self
            .app
            .keys
            .revoke(&admin, &self.app.hub, kid, self.origin(&request))
            .await?;
        // Counted here rather than in `keys`, with the other causes counted by their use cases.
        self.app.metrics.revoked("key_revoked", 1);
        Ok(Response::new(pb::RevokeSigningKeyResponse { signing_kid }))
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Reply<pb::GetJwksResponse> {
        Ok(Response::new(jwks_to_pb(self.app.keys.jwks())))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Reply<pb::ListAuditEventsResponse> {
        let admin = self.admin(request.metadata()).await?;
        let pb::ListAuditEventsRequest {
            page_size,
            page_token,
            user_id,
            kind,
            since,
        } = request.into_inner();
        let size = pagination::page_size(page_size)
            .ok_or_else(|| AuthError::invalid("page_size", "must not be negative"))?;
        let user_id = optional_user_id(&user_id)?;
        let kind = audit_kind_from_pb(kind)?;
        let since = since
            .map(std::time::SystemTime::try_from)
            .transpose()
            .map_err(|_| AuthError::invalid("since", "is not a valid timestamp"))?;
        // The filter the page token is bound to.
        let filter = format!(
            "{}|{}|{}",
            user_id.as_deref().unwrap_or(""),
            kind.map_or("", AuditKind::as_str),
            since.map_or(i64::MIN, watchword_db::to_micros)
        );
        let before_id = decode_page_token(AUDIT_PAGE, &page_token, &filter)?
            .map(|position| position.parse::<i64>())
            .transpose()
            .map_err(|_| AuthError::invalid("page_token", "is not a token this service issued"))?;
        let query = AuditQuery {
            user_id,
            kind,
            since,
            before_id,
            limit: size + 1,
        };
        let mut events = self.app.admin.audit_events(&admin, query).await?;
        let next_page_token = next_page(&mut events, size, |(id, _)| {
            encode_page_token(AUDIT_PAGE, &id.to_string(), &filter)
        });
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(|(_, e)| audit_event_to_pb(e)).collect(),
            next_page_token,
        }))
    }

    async fn get_me(&self, request: Request<pb::GetMeRequest>) -> Reply<pb::GetMeResponse> {
        let caller = self.caller(request.metadata()).await?;
        let (user, session) = self.app.sessions.me(&caller).await?;
        Ok(Response::new(pb::GetMeResponse {
            user: Some(user_to_pb(user)),
            session: Some(session_to_pb(session, true)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Reply<pb::ChangePasswordResponse> {
        let caller = self.caller(request.metadata()).await?;
        let origin = self.origin(&request);
        let pb::ChangePasswordRequest {
            current_password,
            new_password,
        } = request.into_inner();
        self.app
            .accounts
            .change_password(&caller, current_password, new_password, origin)
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Reply<pb::ListSessionsResponse> {
        let caller = self.caller(request.metadata()).await?;
        let pb::ListSessionsRequest {
            page_size,
            page_token,
            user_id,
        } = request.into_inner();
        let size = pagination::page_size(page_size)
            .ok_or_else(|| AuthError::invalid("page_size", "must not be negative"))?;
        let user_id = optional_user_id(&user_id)?;
        let filter = user_id.clone().unwrap_or_default();
        let after = decode_page_token(SESSIONS_PAGE, &page_token, &filter)?;
        let mut sessions = self.app.sessions.list(&caller, user_id, after, size + 1).await?;
        let next_page_token = next_page(&mut sessions, size, |(session, _)| {
            encode_page_token(SESSIONS_PAGE, &session.id, &filter)
        });
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|(session, current)| session_to_pb(session, current))
                .collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Reply<pb::RevokeSessionResponse> {
        let caller = self.caller(request.metadata()).await?;
        let origin = self.origin(&request);
        let session_id = parse_id("session_id", &request.get_ref().session_id)?;
        self.app.sessions.revoke(&caller, session_id, origin).await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Reply<pb::CreateApiKeyResponse> {
        let caller = self.caller(request.metadata()).await?;
        let origin = self.origin(&request);
        let user_agent = user_agent_of(request.metadata());
        let pb::CreateApiKeyRequest { name, roles, ttl } = request.into_inner();
        let ttl = ttl
            .map(|ttl| Duration::try_from(ttl).map_err(|_| AuthError::invalid("ttl", "must be positive")))
            .transpose()?;
        let create = CreateKey {
            name: parse_api_key_name(&name)?,
            roles: parse_roles(roles)?,
            ttl,
            user_agent,
        };
        let (key, secret) = self.app.api_keys.create(&caller, create, origin).await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(api_key_to_pb(key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Reply<pb::ListApiKeysResponse> {
        let caller = self.caller(request.metadata()).await?;
        let pb::ListApiKeysRequest {
            page_size,
            page_token,
            user_id,
        } = request.into_inner();
        let size = pagination::page_size(page_size)
            .ok_or_else(|| AuthError::invalid("page_size", "must not be negative"))?;
        let user_id = optional_user_id(&user_id)?;
        let filter = user_id.clone().unwrap_or_default();
        let after = decode_page_token(API_KEYS_PAGE, &page_token, &filter)?;
        let mut keys = self.app.api_keys.list(&caller, user_id, after, size + 1).await?;
        let next_page_token = next_page(&mut keys, size, |key| {
            encode_page_token(API_KEYS_PAGE, &key.id, &filter)
        });
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.into_iter().map(api_key_to_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Reply<pb::RevokeApiKeyResponse> {
        let caller = self.caller(request.metadata()).await?;
        let origin = self.origin(&request);
        let id = parse_id("id", &request.get_ref().id)?;
        self.app.api_keys.revoke(&caller, id, origin).await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn exchange_api_key(
        &self,
        request: Request<pb::ExchangeApiKeyRequest>,
    ) -> Reply<pb::ExchangeApiKeyResponse> {
        let IssuedToken { token, claims } = self.app.api_keys.exchange(&request.get_ref().api_key).await?;
        Ok(Response::new(pb::ExchangeApiKeyResponse {
            access_token: token,
            expires_in: self.expires_in(),
            token_type: "Bearer".to_owned(),
            expire_time: Some(claims.expire_time.into()),
        }))
    }
}

impl AuthApi {
    fn expires_in(&self) -> i32 {
        i32::try_from(self.app.keys.ttl().as_secs()).unwrap_or(i32::MAX)
    }
}

/// Where the call came from, for per-client limits.
fn peer<T>(request: &Request<T>) -> Peer {
    Peer {
        addr: request.remote_addr().map(|addr| addr.ip()),
        forwarded_for: request
            .metadata()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok().map(str::to_owned))
            .collect(),
    }
}

/// The client's `user-agent`, as a session keeps it.
fn user_agent_of(metadata: &MetadataMap) -> Option<String> {
    metadata
        .get("user-agent")
        .and_then(|value| value.to_str().ok())
        .and_then(user_agent)
}

/// The bearer token of `metadata`, with credential problems as token errors.
fn bearer(metadata: &MetadataMap) -> Result<&str, AuthError> {
    bearer_token(metadata.as_ref()).map_err(|e| {
        AuthError::Token(match e {
            CredentialsError::Missing => TokenError::Missing,
            _ => TokenError::Malformed,
        })
    })
}

/// Username, password and device token from the body, or username and password from HTTP Basic
/// metadata when both body fields are empty.
fn login_credentials(request: Request<pb::LoginRequest>) -> Result<(String, String, String), AuthError> {
    let from_metadata = request.get_ref().username.is_empty() && request.get_ref().password.is_empty();
    if !from_metadata {
        let pb::LoginRequest {
            username,
            password,
            device_token,
        } = request.into_inner();
        return Ok((username, password, device_token));
    }
    let (username, password) = basic_credentials(request.metadata().as_ref()).map_err(|e| match e {
        CredentialsError::Missing => AuthError::invalid(
            "username",
            "required: set username and password, or send `authorization: Basic` metadata",
        ),
        e => AuthError::invalid("authorization", e.to_string()),
    })?;
    Ok((username, password, request.into_inner().device_token))
}

const USER_PAGE_TOKEN_PREFIX: &str = "u1:";

fn encode_user_page_token(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{USER_PAGE_TOKEN_PREFIX}{last_id}"))
}

fn decode_user_page_token(token: &str) -> Result<Option<String>, AuthError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || AuthError::invalid("page_token", "is not a token this service issued");
    let decoded = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let id = decoded.strip_prefix(USER_PAGE_TOKEN_PREFIX).ok_or_else(invalid)?;
    Ok(Some(parse_user_id(id).map_err(|_| invalid())?))
}

/// What a page token's position belongs to: a token of one listing is no token of another.
const AUDIT_PAGE: &str = "audit";
const SESSIONS_PAGE: &str = "sessions";
const API_KEYS_PAGE: &str = "api_keys";

/// A page token: where the next page starts, bound to the filter it was issued for (AIP-158: a token
/// replayed with another filter is INVALID_ARGUMENT). Opaque to clients.
fn encode_page_token(listing: &str, position: &str, filter: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{listing}\n{position}\n{filter}"))
}

/// The position in `token` (`None` for an empty token, the first page), if it was issued for `listing`
/// with `filter`.
fn decode_page_token(listing: &str, token: &str, filter: &str) -> Result<Option<String>, AuthError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || AuthError::invalid("page_token", "is not a token this service issued");
    let decoded = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let mut parts = decoded.splitn(3, '\n');
    let (Some(kind), Some(position), Some(issued_for)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if kind != listing || position.is_empty() {
        return Err(invalid());
    }
    if issued_for != filter {
        return Err(AuthError::invalid(
            "page_token",
            "was issued for a different filter",
        ));
    }
    Ok(Some(position.to_owned()))
}

/// Cuts `items` (fetched one past the page size) to `size`, returning the token for the next page (empty
/// on the last page).
fn next_page<T>(items: &mut Vec<T>, size: usize, token: impl FnOnce(&T) -> String) -> String {
    if items.len() <= size {
        return String::new();
    }
    items.truncate(size);
    items.last().map(token).unwrap_or_default()
}

/// An optional user id filter: empty means none.
fn optional_user_id(raw: &str) -> Result<Option<String>, AuthError> {
    (!raw.is_empty()).then(|| parse_user_id(raw)).transpose()
}

/// An audit kind filter: `AUDIT_EVENT_KIND_UNSPECIFIED` means any kind. The proto enum's value names are
/// the kinds' names, so they convert by name.
fn audit_kind_from_pb(kind: i32) -> Result<Option<AuditKind>, AuthError> {
    let unknown = || AuthError::invalid("kind", "is not an AuditEventKind");
    match pb::AuditEventKind::try_from(kind).map_err(|_| unknown())? {
        pb::AuditEventKind::Unspecified => Ok(None),
        kind => AuditKind::parse(kind.as_str_name()).map(Some).ok_or_else(unknown),
    }
}

fn audit_kind_to_pb(kind: AuditKind) -> pb::AuditEventKind {
    pb::AuditEventKind::from_str_name(kind.as_str()).unwrap_or(pb::AuditEventKind::Unspecified)
}

fn audit_event_to_pb(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        kind: audit_kind_to_pb(event.kind).into(),
        time: Some(event.time.into()),
        actor_id: event.actor_id.unwrap_or_default(),
        subject_id: event.subject_id.unwrap_or_default(),
        client_address: event.client_address.unwrap_or_default(),
        session_id: event.session_id.unwrap_or_default(),
        detail: event.detail,
    }
}

fn api_key_to_pb(key: ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: key.id,
        name: key.name,
        roles: key.roles,
        create_time: Some(key.create_time.into()),
        expire_time: Some(key.expire_time.into()),
        user_id: key.user_id,
        last_exchange_time: key.last_exchange_time.map(Into::into),
    }
}

fn session_to_pb(session: Session, current: bool) -> pb::Session {
    pb::Session {
        id: session.id,
        create_time: Some(session.create_time.into()),
        last_refresh_time: session.last_refresh_time.map(Into::into),
        expire_time: Some(session.expire_time.into()),
        api_key_id: session.api_key_id.unwrap_or_default(),
        client_address: session.client_address.unwrap_or_default(),
        user_agent: session.user_agent.unwrap_or_default(),
        current,
    }
}

fn user_to_pb(user: User) -> pb::User {
    pb::User {
        id: user.id,
        username: user.username,
        roles: user.roles,
        create_time: Some(user.create_time.into()),
        disabled: user.disabled,
    }
}

fn claims_to_pb(claims: Claims) -> pb::Claims {
    pb::Claims {
        subject: claims.subject,
        username: claims.username,
        roles: claims.roles,
        token_id: claims.token_id,
        issue_time: Some(claims.issue_time.into()),
        expire_time: Some(claims.expire_time.into()),
        issuer: claims.issuer,
        audience: claims.audience,
        session_id: claims.session_id,
        key_id: claims.key_id,
    }
}

fn revocation_to_pb(r: Revocation, window: Duration) -> pb::WatchRevocationsResponse {
    use pb::watch_revocations_response::Target as PbTarget;
    pb::WatchRevocationsResponse {
        target: Some(match r.target {
            Target::Session(id) => PbTarget::SessionId(id),
            Target::User(id) => PbTarget::UserId(id),
            Target::Key(id) => PbTarget::KeyId(id),
        }),
        revoke_time: Some(r.revoke_time.into()),
        expire_time: Some((r.revoke_time + window).into()),
        reason: r.reason.as_str().to_owned(),
    }
}

fn jwks_to_pb(jwks: Jwks) -> pb::GetJwksResponse {
    let keys = jwks
        .keys
        .iter()
        .map(|key| {
            let jwk = key.jwk();
            let field = |name: &str| jwk[name].as_str().unwrap_or_default().to_owned();
            pb::Jwk {
                kty: field("kty"),
                crv: field("crv"),
                x: field("x"),
                kid: field("kid"),
                alg: field("alg"),
                r#use: field("use"),
            }
        })
        .collect();
    pb::GetJwksResponse {
        jwks_json: jwks.json_document().to_string(),
        keys,
        issuer: jwks.issuer,
        audience: jwks.audience,
        max_token_lifetime: prost_types::Duration::try_from(jwks.max_token_lifetime).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_audit_kind_is_a_value_of_the_proto_enum_and_back() {
        for &kind in AuditKind::ALL {
            let value = audit_kind_to_pb(kind);
            assert_ne!(value, pb::AuditEventKind::Unspecified, "{kind:?}");
            assert_eq!(audit_kind_from_pb(value.into()).unwrap(), Some(kind));
        }
        assert_eq!(audit_kind_from_pb(0).unwrap(), None);
        assert!(audit_kind_from_pb(999).is_err());
    }

    #[test]
    fn page_tokens_are_bound_to_their_listing_and_filter() {
        let token = encode_page_token(AUDIT_PAGE, "42", "u|k|1");
        assert_eq!(
            decode_page_token(AUDIT_PAGE, &token, "u|k|1").unwrap().as_deref(),
            Some("42")
        );
        assert!(decode_page_token(AUDIT_PAGE, &token, "u|k|2").is_err());
        assert!(decode_page_token("sessions", &token, "u|k|1").is_err());
        assert_eq!(decode_page_token(AUDIT_PAGE, "", "x").unwrap(), None);
        for garbage in ["!", "AAAA", &URL_SAFE_NO_PAD.encode("audit\n\nu|k|1")] {
            assert!(
                decode_page_token(AUDIT_PAGE, garbage, "u|k|1").is_err(),
                "{garbage}"
            );
        }
    }
}
