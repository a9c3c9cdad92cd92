//! posts-svc: stores posts behind the Watchword auth guard.
//!
//! The guard ([`watchword::guard`]) wraps only the PostsService, so health and reflection stay reachable
//! without a token. The binary parses [`Settings`] and calls [`serve`]; tests do the same on port 0.

mod domain;
mod error;
mod service;
pub mod settings;
mod store;

use std::future::Future;

use tokio::net::TcpListener;
use tower::Layer as _;
use watchword::{
    guard::{AuthLayer, RemoteValidator},
    pb::posts::v1::{self as pb, posts_service_server::PostsServiceServer},
    server,
};

pub use settings::Settings;

use crate::{service::PostsApi, store::Store};

/// Why posts-svc could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("storage: {0}")]
    Storage(#[from] watchword_db::DbError),
    #[error("auth-svc url: {0}")]
    AuthUrl(tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs posts-svc on `listener` until `shutdown` resolves, then drains in-flight calls for at most
/// `settings.shutdown_grace`. auth-svc need not be up: calls fail with UNAVAILABLE until it is.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let store = Store::open(&settings.database_url).await?;
    let validator = RemoteValidator::connect_lazy(&settings.auth_url, settings.auth_timeout)
        .map_err(ServeError::AuthUrl)?;

    let probe_store = store.clone();
    let (health, health_task) = server::health_service(
        <PostsServiceServer<PostsApi> as tonic::server::NamedService>::NAME,
        move || {
            let store = probe_store.clone();
            async move { store.ping().await.is_ok() }
        },
    )
    .await;
    let (reflection_v1, reflection_v1alpha) = server::reflection(&[pb::FILE_DESCRIPTOR_SET])?;
    let posts = PostsServiceServer::new(PostsApi { store })
        .max_decoding_message_size(server::MAX_DECODING_MESSAGE_BYTES);
    let router = server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AuthLayer::new(validator).layer(posts));

    let result = server::serve(router, listener, shutdown, settings.shutdown_grace).await;
    health_task.abort();
    Ok(result?)
}
