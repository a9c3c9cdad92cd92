//! auth-svc: registers users, logs them in, issues EdDSA-signed access tokens and validates them.
//!
//! The binary (`main.rs`) only parses [`Settings`], sets up logging, binds and calls [`serve`]; tests call
//! [`serve`] the same way on port 0.

mod domain;
mod error;
mod password;
mod refresh;
mod service;
pub mod settings;
mod store;
mod throttle;
pub mod tokens;

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;
use watchword::{
    pb::auth::v1::{self as pb, auth_service_server::AuthServiceServer},
    server,
};

pub use settings::Settings;

use crate::{
    error::AuthError,
    password::PasswordHasher,
    refresh::RefreshTokens,
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
    let api = build(&settings).await?;
    let store = api.store.clone();
    let purge_task = tokio::spawn(purge_expired(store.clone()));

    let (health, health_task) = server::health_service(
        <AuthServiceServer<AuthApi> as tonic::server::NamedService>::NAME,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
    )
    .await;
    let (reflection_v1, reflection_v1alpha) = server::reflection(&[pb::FILE_DESCRIPTOR_SET])?;
    let auth = AuthServiceServer::new(api).max_decoding_message_size(server::MAX_DECODING_MESSAGE_BYTES);
    let router = server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth);

    let result = server::serve(router, listener, shutdown, settings.shutdown_grace).await;
    health_task.abort();
    purge_task.abort();
    Ok(result?)
}

/// Everything the handlers need, from storage up.
async fn build(settings: &Settings) -> Result<AuthApi, ServeError> {
    let (store, hasher) = tokio::join!(Store::open(&settings.database_url), PasswordHasher::new());
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
    Ok(AuthApi {
        store,
        hasher,
        tokens: Arc::new(tokens),
        refresh: RefreshTokens::new(pepper),
        peers: PeerLimiter::new(settings.peer_rate, settings.peer_burst),
        settings: settings.clone(),
    })
}

/// Creates `username` as an admin (with roles admin and user), or gives an existing account the admin
/// role. For `auth-svc --bootstrap-admin`; the password is used only when the account is created.
pub async fn bootstrap_admin(
    settings: &Settings,
    username: &str,
    password: String,
) -> Result<String, ServeError> {
    let api = build(settings).await?;
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

/// Expired refresh tokens can never be used again, nor can idle lockout records matter: dropping them keeps
/// the tables small.
async fn purge_expired(store: Store) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        interval.tick().await;
        match store.purge_expired(std::time::SystemTime::now()).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged expired refresh tokens and idle lockout records"),
            Err(error) => tracing::warn!(%error, "purging expired records failed"),
        }
    }
}

async fn load_signing_key(settings: &Settings, store: &Store) -> Result<SigningKey, ServeError> {
    if let Some(path) = &settings.signing_key_file {
        let pem = std::fs::read_to_string(path).map_err(|source| ServeError::KeyFile {
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
