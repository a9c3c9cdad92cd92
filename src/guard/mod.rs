//! The auth guard: a tower layer that lets no call reach a gRPC handler until its bearer token has been
//! validated.
//!
//! Wrap only the service you want to protect, so health and reflection stay open:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use watchword::guard::{AuthLayer, RemoteValidator};
//! # use watchword::pb::posts::v1::posts_service_server::{PostsService, PostsServiceServer};
//! # fn demo(my_service: impl PostsService) -> Result<(), Box<dyn std::error::Error>> {
//! use tower::Layer as _;
//!
//! let validator = RemoteValidator::connect_lazy("http://127.0.0.1:50051", Duration::from_secs(2))?;
//! let guarded = AuthLayer::new(validator).layer(PostsServiceServer::new(my_service));
//! let router = tonic::transport::Server::builder().add_service(guarded);
//! # Ok(()) }
//! ```
//!
//! Handlers then read the caller with [`identity`]. The guard is async (unlike tonic's `Interceptor`),
//! so it can ask auth-svc over the network without blocking a runtime thread.

pub mod cache;
pub mod feed;
mod identity;
mod layer;
pub mod local;
mod remote;

use std::future::Future;

pub use identity::{GuardError, Identity, identity};
pub use layer::{AuthLayer, Policy, RequireAuth};
pub use remote::RemoteValidator;

/// A background task of the guard, stopped when its owner is dropped.
pub(crate) struct OwnedTask(tokio::task::AbortHandle);

impl OwnedTask {
    pub(crate) fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(task.abort_handle())
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Something that turns a bearer token into an [`Identity`].
pub trait Validator: Send + Sync + 'static {
    /// Validates `token`. Must never return `Ok` for a token it could not check.
    fn validate(&self, token: &str) -> impl Future<Output = Result<Identity, GuardError>> + Send;
}
