//! The gRPC handlers: the boundary where protobuf types become domain values and back.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;
use tokio_stream::{
    Stream, StreamExt as _,
    wrappers::{BroadcastStream, IntervalStream, ReceiverStream},
};
use watchword::{reason::Reason, token::CLOCK_LEEWAY};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use watchword::{
    credentials::{CredentialsError, basic_credentials, bearer_token},
    pagination,
    pb::auth::v1::{self as pb, auth_service_server::AuthService},
};

use crate::{
    domain::{NewPassword, ROLE_USER, User, Username, check_max_length, parse_roles, parse_user_id},
    error::AuthError,
    password::PasswordHasher,
    refresh::RefreshTokens,
    revocations::{Liveness, Revocation, RevocationHub, Target},
    settings::Settings,
    store::{Rotation, Store, StoreError},
    throttle::PeerLimiter,
    tokens::{Claims, IssuedToken, SigningKey, TokenError, Tokens},
};

pub struct AuthApi {
    pub(crate) store: Store,
    pub(crate) revocations: RevocationHub,
    /// Becomes `true` when the server starts shutting down, so endless streams end and draining is quick.
    pub(crate) stopping: watch::Receiver<bool>,
    /// When keys were last reloaded from storage because a token named a key we did not know.
    pub(crate) last_key_reload: Mutex<Option<Instant>>,
    pub(crate) hasher: PasswordHasher,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) refresh: RefreshTokens,
    pub(crate) peers: PeerLimiter,
    pub(crate) settings: Settings,
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    #[tracing::instrument(skip_all)]
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.check_peer(&request)?;
        let _admitted = self.hasher.admit()?;
        let pb::RegisterRequest { username, password } = request.into_inner();
        let user = self
            .create_user(&username, password, vec![ROLE_USER.to_owned()])
            .await?;
        tracing::info!(user_id = %user.id, "registered user");
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_to_pb(user)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        self.check_peer(&request)?;
        let _admitted = self.hasher.admit()?;
        let (username, password) = login_credentials(request)?;
        check_max_length(&password)?;
        let now = watchword_db::now();
        // A username that cannot exist is treated exactly like one that does not: same throttling, same
        // work, same answer.
        let parsed = Username::parse(&username).ok();
        let lockout_key = parsed
            .as_ref()
            .map_or_else(|| impossible_key(&username), |u| u.key().to_owned());
        self.store
            .begin_login_attempt(&lockout_key, self.settings.lockout_threshold, now)
            .await
            .map_err(AuthError::from)?
            .map_err(|retry_after| AuthError::AccountLocked { retry_after })?;
        let found = match &parsed {
            Some(username) => self
                .store
                .find_credentials(username)
                .await
                .map_err(AuthError::from)?,
            None => None,
        };
        let stored_hash = found.as_ref().map(|c| c.password_hash.clone());
        let matches = self.hasher.verify(password, stored_hash).await?;
        // A disabled account fails like a wrong password, after the same work.
        let user = match found {
            Some(credentials) if matches && !credentials.user.disabled => credentials.user,
            _ => return Err(AuthError::BadCredentials.into()),
        };
        self.store
            .login_succeeded(&lockout_key)
            .await
            .map_err(AuthError::from)?;
        let session_id = uuid::Uuid::now_v7().to_string();
        let refresh_token =
            RefreshTokens::generate().map_err(|e| AuthError::Internal(format!("randomness: {e}")))?;
        let refresh_hash = self
            .refresh
            .hash(&refresh_token)
            .map_err(|_| internal("fresh token shape"))?;
        let refresh_expire_time = now + self.settings.refresh_token_ttl;
        self.store
            .create_session(&session_id, &user.id, refresh_hash, refresh_expire_time, now)
            .await
            .map_err(AuthError::from)?;
        let issued = self.issue(&user, &session_id, now)?;
        tracing::info!(user_id = %user.id, session_id, token_id = %issued.claims.token_id, "logged in");
        Ok(Response::new(pb::LoginResponse {
            access_token: issued.token,
            token_type: "Bearer".to_owned(),
            expires_in: self.expires_in(),
            expire_time: Some(issued.claims.expire_time.into()),
            refresh_token,
            session_id,
            refresh_expire_time: Some(refresh_expire_time.into()),
            device_token: String::new(),
        }))
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let claims = if request.get_ref().token.is_empty() {
            self.authenticate(bearer(request.metadata())?).await?
        } else {
            self.authenticate(&request.get_ref().token).await?
        };
        Ok(Response::new(pb::ValidateResponse {
            claims: Some(claims_to_pb(claims)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let presented = request.into_inner().refresh_token;
        if presented.is_empty() {
            return Err(AuthError::Token(TokenError::Missing).into());
        }
        // An access token, or anything else we never issued as a refresh token, has the wrong shape.
        let hash = self
            .refresh
            .hash(&presented)
            .map_err(|_| TokenError::Claims("not a refresh token"));
        let hash = hash.map_err(AuthError::from)?;
        let successor = self
            .refresh
            .successor(&presented)
            .map_err(|_| internal("successor shape"))?;
        let successor_hash = self
            .refresh
            .hash(&successor)
            .map_err(|_| internal("successor shape"))?;
        let now = SystemTime::now();
        let rotation = self
            .store
            .rotate_refresh(
                hash,
                successor_hash,
                now,
                self.settings.refresh_reuse_grace,
                self.settings.refresh_token_ttl,
            )
            .await
            .map_err(AuthError::from)?;
        let (user, session_id, refresh_expire_time) = match rotation {
            Rotation::Rotated {
                user,
                session_id,
                expire_time,
            } => (user, session_id, expire_time),
            Rotation::Unknown => {
                return Err(AuthError::Token(TokenError::Claims("unknown refresh token")).into());
            }
            Rotation::Expired => return Err(AuthError::Token(TokenError::Expired).into()),
            Rotation::Revoked => return Err(AuthError::Token(TokenError::Revoked).into()),
            Rotation::UserDisabled => return Err(AuthError::UserDisabled.into()),
            Rotation::Locked(retry_after) => return Err(AuthError::AccountLocked { retry_after }.into()),
            Rotation::Reused { session_id } => {
                tracing::warn!(
                    session_id,
                    "rotated refresh token presented again: session revoked"
                );
                self.revocations.publish(Revocation {
                    target: Target::Session(session_id),
                    revoke_time: now,
                    reason: Reason::TokenRevoked,
                });
                return Err(AuthError::Token(TokenError::Revoked).into());
            }
        };
        let issued = self.issue(&user, &session_id, now)?;
        Ok(Response::new(pb::RefreshResponse {
            access_token: issued.token,
            refresh_token: successor,
            expires_in: self.expires_in(),
            expire_time: Some(issued.claims.expire_time.into()),
            token_type: "Bearer".to_owned(),
            refresh_expire_time: Some(refresh_expire_time.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let now = SystemTime::now();
        let session_id = match bearer_token(request.metadata().as_ref()) {
            // Only the signature and claims matter here, not whether the session is still live: logging
            // out twice is fine.
            Ok(token) => {
                self.tokens
                    .verify(token, now)
                    .map_err(AuthError::from)?
                    .session_id
            }
            Err(CredentialsError::Missing) => {
                let presented = &request.get_ref().refresh_token;
                if presented.is_empty() {
                    return Err(AuthError::Token(TokenError::Missing).into());
                }
                let hash = self
                    .refresh
                    .hash(presented)
                    .map_err(|_| AuthError::Token(TokenError::Malformed))?;
                self.store
                    .session_of_refresh(hash)
                    .await
                    .map_err(AuthError::from)?
                    .ok_or(AuthError::Token(TokenError::Claims("unknown refresh token")))?
            }
            Err(_) => return Err(AuthError::Token(TokenError::Malformed).into()),
        };
        self.store
            .revoke_session(&session_id, now)
            .await
            .map_err(AuthError::from)?;
        self.revocations.publish(Revocation {
            target: Target::Session(session_id.clone()),
            revoke_time: now,
            reason: Reason::TokenRevoked,
        });
        tracing::info!(session_id, "logged out");
        Ok(Response::new(pb::LogoutResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn set_user_roles(
        &self,
        request: Request<pb::SetUserRolesRequest>,
    ) -> Result<Response<pb::SetUserRolesResponse>, Status> {
        let admin = self.require_admin(request.metadata()).await?;
        let pb::SetUserRolesRequest { user_id, roles } = request.into_inner();
        let (user_id, roles) = (parse_user_id(&user_id)?, parse_roles(roles)?);
        let now = watchword_db::now();
        let (user, ended_sessions) = self
            .store
            .set_roles(&user_id, roles, now)
            .await
            .map_err(AuthError::from)?
            .ok_or(AuthError::UserNotFound)?;
        // Name the sessions, not the user: a token from a login right after this must stay valid, and
        // `iat` has only one-second resolution.
        for session_id in ended_sessions {
            self.revocations.publish(Revocation {
                target: Target::Session(session_id),
                revoke_time: now,
                reason: Reason::TokenRevoked,
            });
        }
        tracing::info!(admin = %admin.subject, user_id, roles = ?user.roles, "set roles");
        Ok(Response::new(pb::SetUserRolesResponse {
            user: Some(user_to_pb(user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.require_admin(request.metadata()).await?;
        let pb::ListUsersRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let size = pagination::page_size(page_size)
            .ok_or_else(|| AuthError::invalid("page_size", "must not be negative"))?;
        let after = decode_user_page_token(&page_token)?;
        let mut users = self
            .store
            .list_users(after, size + 1)
            .await
            .map_err(AuthError::from)?;
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
    async fn disable_user(
        &self,
        request: Request<pb::DisableUserRequest>,
    ) -> Result<Response<pb::DisableUserResponse>, Status> {
        let admin = self.require_admin(request.metadata()).await?;
        let user_id = parse_user_id(&request.get_ref().user_id)?;
        let now = watchword_db::now();
        let user = self
            .store
            .disable_user(&user_id, now)
            .await
            .map_err(AuthError::from)?
            .ok_or(AuthError::UserNotFound)?;
        self.revocations.publish(Revocation {
            target: Target::User(user.id.clone()),
            revoke_time: now,
            reason: Reason::UserDisabled,
        });
        tracing::info!(admin = %admin.subject, user_id, "disabled user");
        Ok(Response::new(pb::DisableUserResponse {
            user: Some(user_to_pb(user)),
        }))
    }
    type WatchRevocationsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchRevocationsResponse, Status>> + Send + 'static>>;

    async fn watch_revocations(
        &self,
        _request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        // Subscribe before reading the snapshot, so nothing falls between the two (repeats are harmless).
        let live = BroadcastStream::new(self.revocations.subscribe());
        let window = self.tokens.ttl() + CLOCK_LEEWAY;
        let since = SystemTime::now() - window;
        let snapshot = self
            .store
            .recent_revocations(since)
            .await
            .map_err(AuthError::from)?;
        let to_pb = move |r: Revocation| revocation_to_pb(r, window);
        let snapshot = tokio_stream::iter(snapshot.into_iter().map(move |r| Ok(to_pb(r))));
        // The first tick is immediate: it marks the end of the snapshot.
        let heartbeats = IntervalStream::new(tokio::time::interval(REVOCATION_HEARTBEAT))
            .map(|_| Ok(pb::WatchRevocationsResponse::default()));
        let live = live.map(move |event| match event {
            Ok(r) => Ok(to_pb(r)),
            // Too slow to keep up: end the stream so the client drops its cache and reconnects.
            Err(_lagged) => Err(Status::unavailable("revocation stream fell behind; reconnect")),
        });
        let events = snapshot.chain(heartbeats.merge(live));
        // Forward until the client goes away or the server starts shutting down.
        let mut stopping = self.stopping.clone();
        let stop = async move {
            while !*stopping.borrow_and_update() {
                if stopping.changed().await.is_err() {
                    break;
                }
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            tokio::pin!(events, stop);
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    event = events.next() => {
                        let Some(event) = event else { break };
                        if tx.send(event).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let admin = self.require_admin(request.metadata()).await?;
        if self.settings.signing_key_file.is_some() {
            return Err(AuthError::KeyManagedByFile.into());
        }
        let key = SigningKey::generate().map_err(|e| AuthError::Internal(e.to_string()))?;
        self.store
            .rotate_key(key.kid(), key.to_pkcs8_pem(), SystemTime::now())
            .await
            .map_err(AuthError::from)?;
        self.reload_keys().await?;
        tracing::info!(admin = %admin.subject, kid = key.kid(), "rotated signing key");
        Ok(Response::new(pb::RotateSigningKeyResponse {
            kid: key.kid().to_owned(),
        }))
    }

    async fn unlock_user(
        &self,
        _request: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::UnlockUserResponse>, Status> {
        Err(Status::unimplemented("UnlockUser is not implemented yet"))
    }

    async fn revoke_signing_key(
        &self,
        _request: Request<pb::RevokeSigningKeyRequest>,
    ) -> Result<Response<pb::RevokeSigningKeyResponse>, Status> {
        Err(Status::unimplemented("RevokeSigningKey is not implemented yet"))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys: Vec<pb::Jwk> = self
            .tokens
            .public_keys()
            .into_iter()
            .map(|key| pb::Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(key.x),
                kid: key.kid,
                alg: "EdDSA".into(),
                r#use: "sig".into(),
            })
            .collect();
        let json_keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| serde_json::json!({"kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg, "use": k.r#use}))
            .collect();
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: serde_json::json!({ "keys": json_keys }).to_string(),
            keys,
            issuer: self.tokens.issuer().to_owned(),
            audience: self.tokens.audience().to_owned(),
            max_token_lifetime: prost_types::Duration::try_from(self.tokens.ttl()).ok(),
        }))
    }
}

/// How often a WatchRevocations stream says "still here" when nothing happens.
pub(crate) const REVOCATION_HEARTBEAT: Duration = Duration::from_secs(5);

fn revocation_to_pb(r: Revocation, window: Duration) -> pb::WatchRevocationsResponse {
    use pb::watch_revocations_response::Target as PbTarget;
    pb::WatchRevocationsResponse {
        target: Some(match r.target {
            Target::Session(id) => PbTarget::SessionId(id),
            Target::User(id) => PbTarget::UserId(id),
        }),
        revoke_time: Some(r.revoke_time.into()),
        expire_time: Some((r.revoke_time + window).into()),
        reason: r.reason.as_str().to_owned(),
    }
}

impl AuthApi {
    /// Reloads the key set from storage: picks up a rotation made here or by another replica, and drops
    /// keys whose tokens have all expired. A key from --signing-key-file is never replaced.
    pub(crate) async fn reload_keys(&self) -> Result<(), AuthError> {
        if self.settings.signing_key_file.is_some() {
            return Ok(());
        }
        let cutoff = SystemTime::now() - self.tokens.ttl() - CLOCK_LEEWAY;
        let stored = self.store.load_keys(cutoff).await?;
        let mut signing = None;
        let mut verifying = Vec::new();
        for (pem, retired) in stored {
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| AuthError::Internal(e.to_string()))?;
            if !retired && signing.is_none() {
                signing = Some(key);
            } else {
                verifying.push(key.public_key());
            }
        }
        let signing = signing.ok_or_else(|| AuthError::Internal("no active signing key stored".into()))?;
        self.tokens.replace_keys(signing, verifying);
        Ok(())
    }

    /// Verifies `token`; if it names a key we do not know, reloads keys once (at most once a second) in case
    /// another replica rotated, and tries again.
    async fn verify_or_reload(&self, token: &str) -> Result<Claims, AuthError> {
        match self.tokens.verify(token, SystemTime::now()) {
            Err(TokenError::UnknownKey) if self.may_reload_keys() => {
                self.reload_keys().await?;
                Ok(self.tokens.verify(token, SystemTime::now())?)
            }
            other => Ok(other?),
        }
    }

    fn may_reload_keys(&self) -> bool {
        let mut last = self
            .last_key_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Checks `token` completely: signature and claims, then that its session is live and its user enabled.
    async fn authenticate(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify_or_reload(token).await?;
        let live = self.revocations.live_sessions();
        let epoch = match live.lookup(&claims.session_id, &claims.subject) {
            Liveness::Live => return Ok(claims),
            Liveness::Unknown(epoch) => epoch,
        };
        let state = self
            .store
            .session_state(&claims.session_id, &claims.subject)
            .await?
            .ok_or(TokenError::Revoked)?;
        if state.user.disabled {
            return Err(AuthError::UserDisabled);
        }
        if state.revoked {
            return Err(TokenError::Revoked.into());
        }
        live.remember(&claims.session_id, &claims.subject, epoch);
        Ok(claims)
    }

    /// The caller's claims if its bearer token is valid and its account is an admin *now* (roles are read
    /// from storage, not from the token, so a demotion takes effect at once).
    async fn require_admin(&self, metadata: &MetadataMap) -> Result<Claims, AuthError> {
        let claims = self.authenticate(bearer(metadata)?).await?;
        let user = self.store.find_user(&claims.subject).await?;
        match user {
            Some(user) if user.is_admin() => Ok(claims),
            _ => Err(AuthError::AdminRequired),
        }
    }

    /// Registers a user with `roles`, enforcing the username and password rules.
    pub(crate) async fn create_user(
        &self,
        username: &str,
        password: String,
        roles: Vec<String>,
    ) -> Result<User, AuthError> {
        let username = Username::parse(username)?;
        let password = NewPassword::parse(
            password,
            usize::from(self.settings.min_password_length),
            &username,
        )?;
        let hash = self.hasher.hash(password.into_inner()).await?;
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.as_str().to_owned(),
            roles,
            create_time: watchword_db::now(),
            disabled: false,
        };
        self.store
            .insert_user(&user, &username, hash)
            .await
            .map_err(|e| match e {
                StoreError::Conflict => AuthError::UsernameTaken,
                StoreError::Db(e) => AuthError::Storage(e),
            })?;
        Ok(user)
    }

    /// Applies the per-peer-address rate limit (calls that did not come over TCP are not limited).
    fn check_peer<T>(&self, request: &Request<T>) -> Result<(), AuthError> {
        match request.remote_addr() {
            Some(peer) => self
                .peers
                .check(peer.ip(), Instant::now())
                .map_err(|retry_after| AuthError::RateLimited { retry_after }),
            None => Ok(()),
        }
    }

    fn issue(&self, user: &User, session_id: &str, now: SystemTime) -> Result<IssuedToken, AuthError> {
        self.tokens
            .issue(user, session_id, now)
            .map_err(|e| AuthError::Internal(format!("signing: {e}")))
    }

    fn expires_in(&self) -> i32 {
        i32::try_from(self.tokens.ttl().as_secs()).unwrap_or(i32::MAX)
    }
}

/// The lockout key for a username that cannot be registered. `~` never appears in a real key, so these
/// cannot lock a real account; the length is bounded so junk cannot bloat storage.
fn impossible_key(raw: &str) -> String {
    format!("~{}", raw.chars().take(128).collect::<String>().to_lowercase())
}

fn internal(what: &str) -> AuthError {
    AuthError::Internal(what.to_owned())
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

/// Username and password from the body, or from HTTP Basic metadata when both body fields are empty.
fn login_credentials(request: Request<pb::LoginRequest>) -> Result<(String, String), AuthError> {
    let from_metadata = request.get_ref().username.is_empty() && request.get_ref().password.is_empty();
    if !from_metadata {
        let pb::LoginRequest {
            username, password, ..
        } = request.into_inner();
        return Ok((username, password));
    }
    basic_credentials(request.metadata().as_ref()).map_err(|e| match e {
        CredentialsError::Missing => AuthError::invalid(
            "username",
            "required: set username and password, or send `authorization: Basic` metadata",
        ),
        e => AuthError::invalid("authorization", e.to_string()),
    })
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
