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
pub mod extauthz;
mod grpc;
pub mod internal;
pub mod keys;
mod metrics;
mod opaque;
mod password;
mod policy;
mod revocations;
pub mod sealing;
mod sessions;
pub mod settings;
mod store;
mod throttle;
pub mod wellknown;

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use watchword::{
    admin::AdminServer,
    metrics::Metrics,
    observe::{Methods, ObserveLayer},
    pb::auth::v1::{self as pb, auth_service_server::AuthServiceServer},
    server,
};

pub use settings::Settings;
pub use store::MIGRATIONS;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;

use crate::{
    app::App, error::AuthError, extauthz::ExtAuthz, grpc::AuthApi, internal::InternalCallers,
    wellknown::WellKnown,
};

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
    #[error("{0}")]
    Tls(#[from] watchword::transport::TlsError),
    #[error("{0}")]
    Listen(String),
    #[error("admin listener ({addr}): {source}")]
    Admin {
        addr: watchword::admin::AdminListen,
        source: std::io::Error,
    },
}

/// Runs auth-svc on `listener` (and its admin server on `settings.admin_listen`) until `shutdown`
/// resolves, then drains in-flight calls for at most `settings.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = settings.admin_listen;
    let admin = addr
        .bind()
        .await
        .map_err(|source| ServeError::Admin { addr, source })?;
    serve_with_admin(listener, admin, settings, shutdown).await
}

/// [`serve`], with the admin server on `admin` (bound by the caller, who then knows its address) instead
/// of `settings.admin_listen`; `None`: no admin server, and nothing is counted.
pub async fn serve_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = match admin {
        Some(_) => Metrics::new(),
        None => Metrics::disabled(),
    };
    let transport = settings.transport()?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Listen(e.to_string()))?;
    watchword::transport::check_listen(addr, transport.is_tls(), settings.insecure_listen)
        .map_err(ServeError::Listen)?;
    let internal = InternalCallers::new(settings.tls_client_ca.is_some(), &settings.internal_clients);
    if matches!(internal, InternalCallers::Anyone) && !watchword::transport::is_loopback(addr.ip()) {
        tracing::warn!(
            "Validate and WatchRevocations are open to any client that reaches {addr}: give --tls-client-ca \
             (and --internal-clients) so only your services can call them"
        );
    }

    // On SQLite, this process must see every revocation (Validate remembers live sessions): claim the file
    // before touching it, and hold the claim until serving ends. A shared PostgreSQL database is not claimed,
    // and then Validate reads session state from storage every time.
    let claim = settings.database_url.claim_exclusive()?;
    let app = Arc::new(App::build(&settings, claim.is_some(), &metrics).await?);
    let background = app.start_background();

    let store = app.store.clone();
    let (health, health_task, readiness) = server::health_service(
        <AuthServiceServer<AuthApi> as tonic::server::NamedService>::NAME,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
    )
    .await;
    let store = app.store.clone();
    watchword::metrics::report_db_connections(&metrics, move || {
        let connections = store.connections();
        (connections.idle, connections.busy)
    });
    let admin = admin.map(|listener| AdminServer::start(listener, metrics.clone(), readiness));
    let (reflection_v1, reflection_v1alpha) = server::reflection(&[pb::FILE_DESCRIPTOR_SET])?;
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let well_known = WellKnown::new(app.keys.clone(), settings.public_url.clone(), transport.is_tls());
    let ext_authz = internal.layer(
        AuthorizationServer::new(ExtAuthz::new(app.clone()))
            .max_decoding_message_size(server::MAX_DECODING_MESSAGE_BYTES),
    );
    let auth = AuthServiceServer::new(AuthApi::new(app, stopping_rx))
        .max_decoding_message_size(server::MAX_DECODING_MESSAGE_BYTES);
    let auth = internal.layer(auth);
    let observe = ObserveLayer::new(
        &metrics,
        &Methods::served_with(&[pb::FILE_DESCRIPTOR_SET, &extauthz::descriptor_set()]),
    );
    let router = server::builder_for(&transport, observe, &settings.cors_allowed_origins)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth)
        .add_service(ext_authz)
        .add_service(well_known);

    let shutdown = async move {
        shutdown.await;
        // End the endless streams (WatchRevocations) so the drain does not wait out the grace period.
        let _ = stopping_tx.send(true);
    };
    let result = server::serve(router, listener, &transport, shutdown, settings.shutdown_grace).await;
    health_task.abort();
    drop(admin);
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
    let app = App::build(settings, false, &Metrics::disabled()).await?;
    Ok(app.accounts.bootstrap_admin(username, password).await?)
}
