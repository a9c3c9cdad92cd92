//! posts-svc's errors and their one mapping to gRPC statuses.

use tonic::{Code, Status};
use watchword::reason::{self, Reason};
use watchword_db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum PostsError {
    /// A request field broke a rule; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("post not found")]
    NotFound,
    #[error("only the author or an admin may delete a post")]
    PermissionDenied,
    #[error("storage: {0}")]
    Storage(#[from] DbError),
}

impl PostsError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<PostsError> for Status {
    fn from(error: PostsError) -> Self {
        match error {
            PostsError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            PostsError::NotFound => Status::not_found(error.to_string()),
            PostsError::PermissionDenied => {
                reason::status(Code::PermissionDenied, Reason::NotOwner, error.to_string())
            }
            PostsError::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                Status::unavailable("storage unavailable, retry later")
            }
        }
    }
}
