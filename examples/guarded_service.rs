//! Another tonic service behind the Watchword guard: an in-memory `posts.v1.PostsService`.
//!
//! The guard part is a few lines in `main` (build the guard, wrap the service) and `identity()` in the
//! handlers; the rest is an ordinary tonic service. Health and reflection are added unguarded next to it,
//! as in posts-svc.
//!
//! ```text
//! cargo run --example guarded_service -- --listen 127.0.0.1:50053 --auth-url http://127.0.0.1:50051
//! ```
//!
//! Against auth-svc over mutual TLS (as `cargo run -p watchword-dev -- --tls` runs it), name the CA and a
//! client certificate auth-svc admits to Validate:
//!
//! ```text
//! cargo run --example guarded_service -- --auth-url https://127.0.0.1:50051 --auth-ca data/tls/ca.pem \
//!   --auth-client-cert data/tls/posts-svc.pem --auth-client-key data/tls/posts-svc.key
//! ```
//!
//! Any posts.v1 client works against it, e.g. `examples/python/client.py --posts 127.0.0.1:50053`.
//!
//! With `--behind-gateway` there is no guard in this process: a gateway in front (Envoy with `ext_authz`
//! to auth-svc, or `jwt_authn` with auth-svc's JWKS; see `examples/envoy/`) has checked the token and
//! names the caller in `x-watchword-*` headers, which this service then trusts. Only ever expose it
//! through that gateway.
//!
//! ```text
//! cargo run --example guarded_service -- --listen 127.0.0.1:50053 --behind-gateway
//! ```

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use watchword::{
    guard::{Guard, Identity, identity},
    pb::posts::v1::{
        self as pb,
        posts_service_server::{PostsService, PostsServiceServer},
    },
    transport::ClientTls,
};

/// Posts by id. Ids are UUIDv7, so id order is creation order.
#[derive(Default)]
struct MemoryPosts(Mutex<BTreeMap<String, pb::Post>>);

impl MemoryPosts {
    fn posts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, pb::Post>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[tonic::async_trait]
impl PostsService for MemoryPosts {
    async fn create_post(
        &self,
        request: Request<pb::CreatePostRequest>,
    ) -> Result<Response<pb::CreatePostResponse>, Status> {
        // The guard has validated the token; the author comes from it, never from the request.
        let caller = identity(&request)?.clone();
        let pb::CreatePostRequest { title, body, .. } = request.into_inner();
        if title.trim().is_empty() || body.trim().is_empty() {
            return Err(Status::invalid_argument("title and body must not be empty"));
        }
        let post = pb::Post {
            id: uuid::Uuid::now_v7().to_string(),
            author_id: caller.user_id,
            author_username: caller.username,
            title,
            body,
            create_time: Some(SystemTime::now().into()),
        };
        self.posts().insert(post.id.clone(), post.clone());
        Ok(Response::new(pb::CreatePostResponse { post: Some(post) }))
    }

    /// Newest first, optionally by one author; a single page of at most 100 (no page tokens here).
    async fn list_posts(
        &self,
        request: Request<pb::ListPostsRequest>,
    ) -> Result<Response<pb::ListPostsResponse>, Status> {
        identity(&request)?; // Fails closed if the guard was not installed.
        let author = request.into_inner().author_id;
        let posts = self
            .posts()
            .values()
            .rev()
            .filter(|p| author.as_ref().is_none_or(|a| *a == p.author_id))
            .take(100)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListPostsResponse {
            posts,
            next_page_token: String::new(),
        }))
    }

    async fn get_post(
        &self,
        request: Request<pb::GetPostRequest>,
    ) -> Result<Response<pb::GetPostResponse>, Status> {
        identity(&request)?;
        let post = self.posts().get(&request.get_ref().id).cloned();
        let post = post.ok_or_else(|| Status::not_found("post not found"))?;
        Ok(Response::new(pb::GetPostResponse { post: Some(post) }))
    }

    async fn delete_post(
        &self,
        request: Request<pb::DeletePostRequest>,
    ) -> Result<Response<pb::DeletePostResponse>, Status> {
        let caller = identity(&request)?;
        let id = &request.get_ref().id;
        let mut posts = self.posts();
        let post = posts.get(id).ok_or_else(|| Status::not_found("post not found"))?;
        if post.author_id != caller.user_id {
            return Err(Status::permission_denied("only the author may delete a post"));
        }
        posts.remove(id);
        Ok(Response::new(pb::DeletePostResponse {}))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    watchword::transport::install_crypto_provider();
    watchword::telemetry::init();
    let (mut listen, mut auth_url) = ("127.0.0.1:50053".to_owned(), "http://127.0.0.1:50051".to_owned());
    let (mut auth_ca, mut client_cert, mut client_key) = (None, None, None);
    let mut behind_gateway = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--behind-gateway" {
            behind_gateway = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value,
            "--auth-url" => auth_url = value,
            "--auth-ca" => auth_ca = Some(value),
            "--auth-client-cert" => client_cert = Some(value),
            "--auth-client-key" => client_key = Some(value),
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --listen ADDR (--behind-gateway | --auth-url URL [--auth-ca PATH] \
                     [--auth-client-cert PATH --auth-client-key PATH])"
                )
                .into());
            }
        }
    }
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;

    if behind_gateway {
        let posts = tonic::service::interceptor::InterceptedService::new(
            PostsServiceServer::new(MemoryPosts::default()),
            identity_from_gateway,
        );
        return serve(listener, tonic::service::Routes::new(posts), "behind a gateway").await;
    }

    // The guard: ask auth-svc about each token (connecting on first use), reuse its verdict for up to 5 s
    // while auth-svc's revocation feed is live, and wrap only this service.
    let mut guard = Guard::builder(&auth_url)
        .timeout(Duration::from_secs(2))
        .cached(Duration::from_secs(5), 100_000);
    // An https:// auth-svc: trust --auth-ca (else the system's roots) and present a client certificate,
    // which auth-svc may require for Validate and its revocation stream (mutual TLS).
    if auth_url.starts_with("https://") {
        let mut tls = ClientTls::builder();
        if let Some(ca) = &auth_ca {
            tls = tls.ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&client_cert, &client_key) {
            tls = tls.identity_files(cert, key);
        }
        guard = guard.tls(tls.build()?);
    }
    let guard = guard.build()?;
    let posts = guard.layer(PostsServiceServer::new(MemoryPosts::default()));
    serve(listener, tonic::service::Routes::new(posts), &auth_url).await
}

/// `--behind-gateway`: the caller the gateway named in `x-watchword-*` headers (Envoy's ext_authz sets
/// them from auth-svc's Check, jwt_authn from the token's claims), as the guard's `Identity`. No header,
/// no caller: UNAUTHENTICATED, so a request that bypassed the gateway's check is refused.
fn identity_from_gateway(mut request: Request<()>) -> Result<Request<()>, Status> {
    let header = |name: &str| {
        request
            .metadata()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let user_id = header("x-watchword-user-id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Status::unauthenticated("no caller from the gateway"))?;
    let now = SystemTime::now();
    let identity = Identity {
        user_id,
        username: header("x-watchword-username").unwrap_or_default(),
        roles: header("x-watchword-roles")
            .map(|roles| {
                roles
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        token_id: String::new(),
        session_id: header("x-watchword-session-id").unwrap_or_default(),
        issue_time: now,
        expire_time: now,
        key_id: String::new(),
    };
    request.extensions_mut().insert(identity);
    Ok(request)
}

/// Serves `posts` (the routes of the one service) with health and reflection beside it until
/// SIGINT/SIGTERM.
async fn serve(
    listener: TcpListener,
    posts: tonic::service::Routes,
    how: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    // Unguarded neighbours: health (reported under the wrapped service's name) and reflection.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<PostsServiceServer<MemoryPosts>>().await;
    let (reflection_v1, reflection_v1alpha) = watchword::server::reflection(&[pb::FILE_DESCRIPTOR_SET])?;

    tracing::info!(addr = %listener.local_addr()?, how, "serving");
    let routes = posts
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            watchword::server::shutdown_signal(),
        )
        .await?;
    Ok(())
}
