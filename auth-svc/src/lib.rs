//! auth-svc: registers users, logs them in, issues EdDSA-signed access tokens and validates them.
//!
//! The binary (`main.rs`) only parses [`Settings`], sets up logging, binds and calls [`serve`]; tests call
//! [`serve`] the same way on port 0.

mod domain;
mod error;
mod password;
mod refresh;
mod revocations;
mod service;
pub mod settings;
mod store;
mod throttle;
pub mod tokens;

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use watchword::{
    pb::auth::v1::{self as pb, auth_service_server::AuthServiceServer},
    server,
};

pub use settings::Settings;

use crate::{
    error::AuthError,
    password::PasswordHasher,
    refresh::RefreshTokens,
    revocations::RevocationHub,
    service::AuthApi,
    store::Store,
    throttle::PeerLimiter,
    tokens::{KeyError, SigningKey, Tokens},
};

/// Why auth-svc could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("storage: {0}")]
    Storage(#[from] watchword_db::DbError),
    #[error("signing key: {0}")]
    Key(#[from] KeyError),
    #[error("reading signing key file {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs auth-svc on `listener` until `shutdown` resolves, then drains in-flight calls for at most
/// `settings.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (stopping_tx, stopping_rx) = watch::channel(false);
    // On SQLite, this process must see every revocation (Validate remembers live sessions): claim the file
    // before touching it, and hold the claim until serving ends. A shared PostgreSQL database is not claimed,
    // and then Validate reads session state from storage every time.
    let claim = settings.database_url.claim_exclusive()?;
    let api = Arc::new(build(&settings, stopping_rx, claim.is_some()).await?);
    let store = api.store.clone();
    let maintenance_task = tokio::spawn(maintain(Arc::clone(&api)));
    // With a shared database, revocations made through other replicas must reach this one's streams too.
    let relay_task = store
        .is_shared()
        .then(|| tokio::spawn(relay_revocations(Arc::clone(&api))));

    let (health, health_task) = server::health_service(
        <AuthServiceServer<AuthApi> as tonic::server::NamedService>::NAME,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
    )
    .await;
    let (reflection_v1, reflection_v1alpha) = server::reflection(&[pb::FILE_DESCRIPTOR_SET])?;
    let auth = AuthServiceServer::from_arc(api).max_decoding_message_size(server::MAX_DECODING_MESSAGE_BYTES);
    let router = server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth);

    let shutdown = async move {
        shutdown.await;
        // End the endless streams (WatchRevocations) so the drain does not wait out the grace period.
        let _ = stopping_tx.send(true);
    };
    let result = server::serve(router, listener, shutdown, settings.shutdown_grace).await;
    health_task.abort();
    maintenance_task.abort();
    if let Some(task) = relay_task {
        task.abort();
    }
    Ok(result?)
}

/// Everything the handlers need, from storage up.
///
/// `remember_live`: whether Validate may remember live sessions, i.e. whether this process has claimed the
/// database and so sees every revocation.
async fn build(
    settings: &Settings,
    stopping: watch::Receiver<bool>,
    remember_live: bool,
) -> Result<AuthApi, ServeError> {
    let pool = settings.pool_options();
    let (store, hasher) = tokio::join!(Store::open(&settings.database_url, &pool), PasswordHasher::new());
    let (store, hasher) = (store?, hasher?);
    let signing_key = load_signing_key(settings, &store).await?;
    tracing::info!(kid = signing_key.kid(), "signing key loaded");
    let tokens = Tokens::new(
        signing_key,
        vec![],
        settings.issuer.clone(),
        settings.audience.clone(),
        settings.access_token_ttl,
    );
    let mut candidate = [0u8; 32];
    getrandom::fill(&mut candidate).map_err(|e| KeyError::Random(e.to_string()))?;
    let pepper = store
        .secret_or_insert("refresh_token_pepper", candidate.to_vec())
        .await?;
    let pepper: [u8; 32] = pepper
        .try_into()
        .map_err(|_| KeyError::Parse("stored refresh_token_pepper is not 32 bytes".into()))?;
    let api = AuthApi {
        store,
        revocations: RevocationHub::new(remember_live),
        stopping,
        last_key_reload: std::sync::Mutex::new(None),
        hasher,
        tokens: Arc::new(tokens),
        refresh: RefreshTokens::new(pepper),
        peers: PeerLimiter::new(settings.peer_rate, settings.peer_burst),
        settings: settings.clone(),
    };
    // Older keys that still verify live tokens join the set (a no-op with --signing-key-file).
    api.reload_keys().await?;
    Ok(api)
}

/// Creates `username` as an admin (with roles admin and user), or gives an existing account the admin
/// role. For `auth-svc --bootstrap-admin`; the password is used only when the account is created.
pub async fn bootstrap_admin(
    settings: &Settings,
    username: &str,
    password: String,
) -> Result<String, ServeError> {
    // Does not claim the database: it only adds or promotes a user, which a running server need not hear
    // about, so it may run beside one. It validates no tokens, so it remembers nothing either.
    let api = build(settings, watch::channel(false).1, false).await?;
    let roles = vec![domain::ROLE_ADMIN.to_owned(), domain::ROLE_USER.to_owned()];
    match api.create_user(username, password, roles.clone()).await {
        Ok(user) => Ok(format!("created admin {} ({})", user.username, user.id)),
        Err(AuthError::UsernameTaken) => {
            let parsed = domain::Username::parse(username)?;
            let existing = api
                .store
                .find_credentials(&parsed)
                .await?
                .ok_or_else(|| AuthError::Internal("user vanished during bootstrap".into()))?
                .user;
            let mut roles = existing.roles.clone();
            roles.extend([domain::ROLE_ADMIN.to_owned()]);
            let roles = domain::parse_roles(roles)?;
            api.store
                .set_roles(&existing.id, roles, std::time::SystemTime::now())
                .await?;
            Ok(format!(
                "granted admin to existing user {} ({})",
                existing.username, existing.id
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Polls the shared database for revocations (any replica's) and publishes the ones not seen yet on this
/// replica's WatchRevocations streams.
///
/// Polling rather than LISTEN/NOTIFY: it needs no dedicated connection or reconnect logic, survives a
/// database restart by itself, and a 250 ms period keeps end-to-end enforcement well under a second. The
/// window overlaps the previous poll so a transaction that commits late is still seen.
async fn relay_revocations(api: Arc<AuthApi>) {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(250);
    const OVERLAP: std::time::Duration = std::time::Duration::from_secs(2);
    let mut seen: std::collections::HashMap<
        (revocations::Target, std::time::SystemTime),
        std::time::SystemTime,
    > = std::collections::HashMap::new();
    let mut since = std::time::SystemTime::now() - OVERLAP;
    let mut interval = tokio::time::interval(EVERY);
    loop {
        interval.tick().await;
        let polled_at = std::time::SystemTime::now();
        match api.store.revocations_since(since).await {
            Ok(found) => {
                for revocation in found {
                    let key = (revocation.target.clone(), revocation.revoke_time);
                    if seen.insert(key, revocation.revoke_time).is_none() {
                        api.revocations.publish(revocation);
                    }
                }
                since = polled_at - OVERLAP;
                seen.retain(|_, at| *at >= since);
            }
            Err(error) => tracing::warn!(%error, "polling revocations failed"),
        }
    }
}

/// Background upkeep: reload the key set now and then (a rotation in another replica), and drop what can
/// no longer matter (expired refresh tokens, idle lockout records, keys whose tokens have all expired).
async fn maintain(api: Arc<AuthApi>) {
    const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
    const PURGE_EVERY_RELOADS: u32 = 360;
    let mut interval = tokio::time::interval(RELOAD_EVERY);
    interval.tick().await;
    let mut ticks = 0u32;
    loop {
        interval.tick().await;
        if let Err(error) = api.reload_keys().await {
            tracing::warn!(%error, "reloading signing keys failed");
        }
        ticks += 1;
        if !ticks.is_multiple_of(PURGE_EVERY_RELOADS) {
            continue;
        }
        let now = std::time::SystemTime::now();
        let key_cutoff = now - api.tokens.ttl() - watchword::token::CLOCK_LEEWAY;
        match tokio::try_join!(
            api.store.purge_expired(now),
            api.store.drop_retired_keys(key_cutoff)
        ) {
            Ok((0, 0)) => {}
            Ok((records, keys)) => tracing::info!(records, keys, "purged expired records and retired keys"),
            Err(error) => tracing::warn!(%error, "purging expired records failed"),
        }
    }
}

async fn load_signing_key(settings: &Settings, store: &Store) -> Result<SigningKey, ServeError> {
    if let Some(path) = &settings.signing_key_file {
        let pem = crate::settings::read_signing_key_file(path).map_err(|source| ServeError::KeyFile {
            path: path.clone(),
            source,
        })?;
        return Ok(SigningKey::from_pkcs8_pem(&pem)?);
    }
    let candidate = SigningKey::generate()?;
    let pem = store
        .signing_key_or_insert(candidate.kid(), candidate.to_pkcs8_pem())
        .await?;
    Ok(SigningKey::from_pkcs8_pem(&pem)?)
}
