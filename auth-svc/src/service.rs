//! The gRPC handlers: the boundary where protobuf types become domain values and back.

use std::{sync::Arc, time::SystemTime};

use tonic::{Request, Response, Status};
use watchword::{
    credentials::{CredentialsError, basic_credentials, bearer_token},
    pb::auth::v1::{self as pb, auth_service_server::AuthService},
};

use crate::{
    domain::{NewPassword, ROLE_USER, User, Username, check_max_length},
    error::AuthError,
    password::PasswordHasher,
    store::{Store, StoreError},
    tokens::{Claims, TokenError, Tokens},
};

pub struct AuthApi {
    pub(crate) store: Store,
    pub(crate) hasher: PasswordHasher,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) min_password_bytes: usize,
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    #[tracing::instrument(skip_all)]
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let pb::RegisterRequest { username, password } = request.into_inner();
        let username = Username::parse(&username)?;
        let password = NewPassword::parse(password, self.min_password_bytes, &username)?;
        let hash = self.hasher.hash(password.into_inner()).await?;
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.as_str().to_owned(),
            roles: vec![ROLE_USER.to_owned()],
            create_time: watchword_db::now(),
        };
        self.store
            .insert_user(&user, &username, hash)
            .await
            .map_err(|e| match e {
                StoreError::Conflict => AuthError::UsernameTaken,
                StoreError::Db(e) => AuthError::Storage(e),
            })?;
        tracing::info!(user_id = %user.id, "registered user");
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_to_pb(user)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let (username, password) = login_credentials(request)?;
        check_max_length(&password)?;
        // A username that cannot exist is treated exactly like one that does not: same work, same answer.
        let found = match Username::parse(&username) {
            Ok(username) => self
                .store
                .find_credentials(&username)
                .await
                .map_err(AuthError::from)?,
            Err(_) => None,
        };
        let stored_hash = found.as_ref().map(|c| c.password_hash.clone());
        let matches = self.hasher.verify(password, stored_hash).await?;
        let user = match found {
            Some(credentials) if matches => credentials.user,
            _ => return Err(AuthError::BadCredentials.into()),
        };
        let issued = self
            .tokens
            .issue(&user, SystemTime::now())
            .map_err(|e| AuthError::Internal(format!("signing: {e}")))?;
        tracing::info!(user_id = %user.id, token_id = %issued.claims.token_id, "issued access token");
        Ok(Response::new(pb::LoginResponse {
            access_token: issued.token,
            token_type: "Bearer".to_owned(),
            expires_in: i32::try_from(self.tokens.ttl().as_secs()).unwrap_or(i32::MAX),
            expire_time: Some(issued.claims.expire_time.into()),
        }))
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let claims = if request.get_ref().token.is_empty() {
            let token = bearer_token(request.metadata().as_ref()).map_err(|e| match e {
                CredentialsError::Missing => TokenError::Missing,
                _ => TokenError::Malformed,
            });
            self.tokens
                .verify(token.map_err(AuthError::from)?, SystemTime::now())
        } else {
            self.tokens.verify(&request.get_ref().token, SystemTime::now())
        };
        let claims = claims.map_err(AuthError::from)?;
        Ok(Response::new(pb::ValidateResponse {
            claims: Some(claims_to_pb(claims)),
        }))
    }
}

/// Username and password from the body, or from HTTP Basic metadata when both body fields are empty.
fn login_credentials(request: Request<pb::LoginRequest>) -> Result<(String, String), AuthError> {
    let from_metadata = request.get_ref().username.is_empty() && request.get_ref().password.is_empty();
    if !from_metadata {
        let pb::LoginRequest { username, password } = request.into_inner();
        return Ok((username, password));
    }
    basic_credentials(request.metadata().as_ref()).map_err(|e| match e {
        CredentialsError::Missing => AuthError::invalid(
            "username",
            "required: set username and password, or send `authorization: Basic` metadata",
        ),
        e => AuthError::invalid("authorization", e.to_string()),
    })
}

fn user_to_pb(user: User) -> pb::User {
    pb::User {
        id: user.id,
        username: user.username,
        roles: user.roles,
        create_time: Some(user.create_time.into()),
    }
}

fn claims_to_pb(claims: Claims) -> pb::Claims {
    pb::Claims {
        subject: claims.subject,
        username: claims.username,
        roles: claims.roles,
        token_id: claims.token_id,
        issue_time: Some(claims.issue_time.into()),
        expire_time: Some(claims.expire_time.into()),
        issuer: claims.issuer,
        audience: claims.audience,
    }
}
