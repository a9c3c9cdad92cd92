//! auth-svc: registers users, logs them in, issues EdDSA-signed access tokens and validates them.
//!
//! The binary (`main.rs`) only parses [`Settings`], sets up logging, binds and calls [`serve`]; tests call
//! [`serve`] the same way on port 0.
//!
//! Layers, from the wire in: `grpc` (protobuf ↔ domain values, one use case per handler), the use cases
//! (`accounts`, `sessions`, `apikeys`, `admin`, `keys`) with the revocation hub (`revocations`), and `store` (each
//! rule once, over two SQL dialects). `app` builds them from the settings.

mod accounts;
mod admin;
mod apikeys;
mod app;
mod audit;
mod domain;
mod error;
mod grpc;
pub mod keys;
mod opaque;
mod password;
mod policy;
mod revocations;
pub mod sealing;
mod sessions;
pub mod settings;
mod store;
mod throttle;

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use watchword::{
    pb::auth::v1::{self as pb, auth_service_server::AuthServiceServer},
    server,
};

pub use settings::Settings;
pub use store::MIGRATIONS;

use crate::{app::App, error::AuthError, grpc::AuthApi};

/// Why auth-svc could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("storage: {0}")]
    Storage(#[from] watchword_db::DbError),
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
    // On SQLite, this process must see every revocation (Validate remembers live sessions): claim the file
    // before touching it, and hold the claim until serving ends. A shared PostgreSQL database is not claimed,
    // and then Validate reads session state from storage every time.
    let claim = settings.database_url.claim_exclusive()?;
    let app = Arc::new(App::build(&settings, claim.is_some()).await?);
    let background = app.start_background().await?;

    let store = app.store.clone();
    let (health, health_task) = server::health_service(
        <AuthServiceServer<AuthApi> as tonic::server::NamedService>::NAME,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
    )
    .await;
    let (reflection_v1, reflection_v1alpha) = server::reflection(&[pb::FILE_DESCRIPTOR_SET])?;
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let auth = AuthServiceServer::new(AuthApi::new(app, stopping_rx))
        .max_decoding_message_size(server::MAX_DECODING_MESSAGE_BYTES);
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
    drop(background);
    drop(claim);
    Ok(result?)
}

/// Creates `username` as an admin (with roles admin and user), or gives an existing account the admin
/// role if `password` is that account's password. For `auth-svc --bootstrap-admin`.
///
/// Does not claim the database: it only adds or promotes a user, which a running server need not hear
/// about, so it may run beside one. It validates no tokens, so it remembers nothing either.
pub async fn bootstrap_admin(
    settings: &Settings,
    username: &str,
    password: String,
) -> Result<String, ServeError> {
    let app = App::build(settings, false).await?;
    Ok(app.accounts.bootstrap_admin(username, password).await?)
}
