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
use tokio::task::JoinHandle;
use watchword::{
    admin::{AdminListen, AdminServer},
    guard::{Guard, GuardBuildError, Identity, Policy, Require},
    metrics::Metrics,
    observe::{Methods, ObserveLayer},
    pb::posts::v1::{self as pb, posts_service_server::PostsServiceServer},
    roles::Level,
    server::{self, Readiness},
    transport as server_transport,
};

pub use settings::{Settings, VerifyMode};
pub use store::MIGRATIONS;

use crate::{service::PostsApi, store::Store};

/// The least role that may call each PostsService method: the one place this is decided. Roles are levels
/// (`guest` < `user` < `admin`): guests read, users (and admins) also write. The guard checks it after
/// validating the token; a method missing from this table is refused, so a new RPC fails closed until
/// someone decides who may call it. (Ownership rules, like who may delete which post, live in the handler.)
pub const POLICY: Policy = Policy::Table(&[
    ("/posts.v1.PostsService/CreatePost", Require::AtLeast(Level::User)),
    ("/posts.v1.PostsService/ListPosts", Require::AtLeast(Level::Guest)),
    ("/posts.v1.PostsService/GetPost", Require::AtLeast(Level::Guest)),
    ("/posts.v1.PostsService/DeletePost", Require::AtLeast(Level::User)),
]);

/// Why posts-svc could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("storage: {0}")]
    Storage(#[from] watchword_db::DbError),
    #[error("guard: {0}")]
    Guard(#[from] GuardBuildError),
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
        addr: AdminListen,
        source: std::io::Error,
    },
}

/// Runs posts-svc on `listener` (and its admin server on `settings.admin_listen`) until `shutdown`
/// resolves, then drains in-flight calls for at most `settings.shutdown_grace`. auth-svc need not be up:
/// calls fail with UNAVAILABLE until it is.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let admin = bind_admin(settings.admin_listen).await?;
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
    let transport = transport(&listener, &settings)?;
    let store = Store::open(&settings.database_url, &settings.pool_options()).await?;
    // Connects to auth-svc lazily: posts-svc starts (and keeps running) while auth-svc is down.
    let mut guard = Guard::builder(&settings.auth_url);
    if let Some(tls) = settings.auth_tls()? {
        guard = guard.tls(tls);
    }
    let guard = guard
        .timeout(settings.auth_timeout)
        .mode(settings.guard_mode())
        .policy(POLICY)
        .metrics(&metrics)
        .build()?;

    let (health, health_task, readiness) = health(&store).await;
    let admin = admin.map(|listener| start_admin(listener, &metrics, &store, readiness));
    let (reflection_v1, reflection_v1alpha) = server::reflection(&[pb::FILE_DESCRIPTOR_SET])?;
    let posts = PostsServiceServer::new(PostsApi { store })
        .max_decoding_message_size(server::MAX_DECODING_MESSAGE_BYTES);
    let router = server::builder_for(&transport, observe(&metrics), &settings.cors_allowed_origins)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(guard.layer(posts));

    let result = server::serve(router, listener, &transport, shutdown, settings.shutdown_grace).await;
    health_task.abort();
    drop(admin);
    Ok(result?)
}

async fn bind_admin(addr: AdminListen) -> Result<Option<TcpListener>, ServeError> {
    addr.bind()
        .await
        .map_err(|source| ServeError::Admin { addr, source })
}

fn observe(metrics: &Metrics) -> ObserveLayer {
    ObserveLayer::new(metrics, &Methods::served_with(&[pb::FILE_DESCRIPTOR_SET]))
}

/// The admin server, with the database's connections among its metrics.
fn start_admin(listener: TcpListener, metrics: &Metrics, store: &Store, readiness: Readiness) -> AdminServer {
    let store = store.clone();
    watchword::metrics::report_db_connections(metrics, move || {
        let connections = store.connections();
        (connections.idle, connections.busy)
    });
    AdminServer::start(listener, metrics.clone(), readiness)
}

/// For benchmarks only: posts-svc with the guard replaced by a fixed caller identity, so a harness can
/// measure what the guard costs (`bench`'s `list-noauth` scenario). No such switch exists in the binary;
/// never serve real traffic with this. Health is served as in [`serve`]; reflection is left out.
pub async fn serve_unguarded(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let transport = transport(&listener, &settings)?;
    let admin = bind_admin(settings.admin_listen).await?;
    let metrics = match admin {
        Some(_) => Metrics::new(),
        None => Metrics::disabled(),
    };
    let store = Store::open(&settings.database_url, &settings.pool_options()).await?;
    let (health, health_task, readiness) = health(&store).await;
    let admin = admin.map(|listener| start_admin(listener, &metrics, &store, readiness));
    let now = std::time::SystemTime::now();
    let caller = Identity {
        user_id: "00000000-0000-4000-8000-000000000000".to_owned(),
        username: "bench".to_owned(),
        roles: vec!["user".to_owned()],
        token_id: "bench".to_owned(),
        session_id: "bench".to_owned(),
        issue_time: now,
        expire_time: now + std::time::Duration::from_secs(365 * 24 * 3600),
        key_id: "bench".to_owned(),
    };
    let posts = PostsServiceServer::new(PostsApi { store })
        .max_decoding_message_size(server::MAX_DECODING_MESSAGE_BYTES);
    let posts =
        tonic::service::interceptor::InterceptedService::new(posts, move |mut request: tonic::Request<()>| {
            request.extensions_mut().insert(caller.clone());
            Ok(request)
        });
    let router = server::builder_for(&transport, observe(&metrics), &settings.cors_allowed_origins)
        .add_service(health)
        .add_service(posts);
    let result = server::serve(router, listener, &transport, shutdown, settings.shutdown_grace).await;
    health_task.abort();
    drop(admin);
    Ok(result?)
}

/// How `listener` is served, refusing plaintext off loopback unless --insecure-listen.
fn transport(listener: &TcpListener, settings: &Settings) -> Result<server_transport::Transport, ServeError> {
    let transport = settings.transport()?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Listen(e.to_string()))?;
    server_transport::check_listen(addr, transport.is_tls(), settings.insecure_listen)
        .map_err(ServeError::Listen)?;
    Ok(transport)
}

/// `grpc.health.v1` for PostsService, SERVING while storage answers.
async fn health(
    store: &Store,
) -> (
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    JoinHandle<()>,
    Readiness,
) {
    let store = store.clone();
    server::health_service(
        <PostsServiceServer<PostsApi> as tonic::server::NamedService>::NAME,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every RPC in the proto has a policy entry, and every entry names a real RPC.
    #[test]
    fn the_policy_covers_exactly_the_rpcs_of_posts_service() {
        let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut rpcs: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "posts.v1")
            .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
            .flat_map(|(package, service)| {
                service
                    .method
                    .iter()
                    .map(move |m| format!("/{package}.{}/{}", service.name(), m.name()))
            })
            .collect();
        let Policy::Table(table) = POLICY else {
            panic!("posts-svc must use a policy table")
        };
        let mut listed: Vec<String> = table.iter().map(|(method, _)| (*method).to_owned()).collect();
        rpcs.sort();
        listed.sort();
        assert_eq!(rpcs, listed);
    }
}
