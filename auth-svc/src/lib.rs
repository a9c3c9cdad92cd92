//! auth-svc: registers users, logs them in, issues EdDSA-signed access tokens and validates them.
//!
//! The binary (`main.rs`) only parses [`Settings`], sets up logging, binds and calls [`serve`]; tests call
//! [`serve`] the same way on port 0.

mod domain;
mod error;
mod password;
mod service;
pub mod settings;
mod store;
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
    service::AuthApi,
    store::Store,
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
    #[error("password hasher: {0}")]
    Hasher(#[from] AuthError),
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
    let (store, hasher) = tokio::join!(Store::open(&settings.database_url), PasswordHasher::new());
    let (store, hasher) = (store?, hasher?);
    let signing_key = load_signing_key(&settings, &store).await?;
    tracing::info!(kid = signing_key.kid(), "signing key loaded");
    let tokens = Tokens::new(
        signing_key,
        settings.issuer.clone(),
        settings.audience.clone(),
        settings.access_token_ttl,
    );
    let api = AuthApi {
        store: store.clone(),
        hasher,
        tokens: Arc::new(tokens),
        min_password_bytes: usize::from(settings.min_password_length),
    };

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
    Ok(result?)
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
