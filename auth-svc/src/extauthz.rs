//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`): a gateway in front of a
//! service that has no guard of its own asks auth-svc about each request.
//!
//! The decision is Validate's (`Sessions::authenticate`, the same in-memory state, so a logout is denied
//! at once), and so is the error mapping: the `Status` Validate would return is turned into the HTTP
//! answer here, in one place. An allowed request goes upstream with the caller in `x-watchword-*`
//! headers, which overwrite any the client sent; a refused one gets 401 with `www-authenticate: Bearer`
//! (RFC 6750) and, for gRPC clients behind the gateway, the status and ErrorInfo they would get from a
//! guarded service. When auth-svc cannot decide (storage down), Check fails with that status and the
//! gateway applies its `status_on_error`: it fails closed.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD};
use envoy_types::ext_authz::v3::{
    CheckRequestExt as _,
    pb::{
        Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
        HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
    },
};
use envoy_types::pb::google::rpc;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tonic::{Code, Request, Response, Status};
use watchword::{
    credentials::{CredentialsError, bearer_token},
    reason,
    token::{Claims, TokenError},
};

use crate::{app::App, error::AuthError};

/// The headers an allowed request carries upstream.
pub const USER_ID: &str = "x-watchword-user-id";
pub const USERNAME: &str = "x-watchword-username";
pub const ROLES: &str = "x-watchword-roles";
pub const SESSION_ID: &str = "x-watchword-session-id";
/// On a refusal: the ErrorInfo reason (`TOKEN_EXPIRED`, ...).
pub const REASON: &str = "x-watchword-reason";

/// A descriptor set naming the one method served here, for the metrics' labels: envoy-types carries the
/// generated code but no descriptors.
pub fn descriptor_set() -> Vec<u8> {
    use prost::Message as _;
    use prost_types::{
        FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
    };
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("envoy/service/auth/v3/external_auth.proto".into()),
            package: Some("envoy.service.auth.v3".into()),
            service: vec![ServiceDescriptorProto {
                name: Some("Authorization".into()),
                method: vec![MethodDescriptorProto {
                    name: Some("Check".into()),
                    input_type: Some(".envoy.service.auth.v3.CheckRequest".into()),
                    output_type: Some(".envoy.service.auth.v3.CheckResponse".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// The `Authorization` service; see the module documentation.
pub struct ExtAuthz {
    app: Arc<App>,
}

impl ExtAuthz {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    #[tracing::instrument(skip_all)]
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let authorization = request
            .get_ref()
            .get_client_headers()
            .and_then(|headers| headers.get("authorization"));
        let decision = match bearer(authorization.map(String::as_str)) {
            Ok(token) => self.app.sessions.authenticate(&token).await,
            Err(error) => Err(error),
        };
        let token_sent = authorization.is_some();
        match decision {
            Ok(claims) => Ok(Response::new(allowed(&claims))),
            Err(error) => denied(Status::from(error), token_sent).map(Response::new),
        }
    }
}

/// The token in an `authorization` header value, parsed as the guard parses it (the same function).
fn bearer(authorization: Option<&str>) -> Result<String, AuthError> {
    let missing = || AuthError::Token(TokenError::Missing);
    let malformed = || AuthError::Token(TokenError::Malformed);
    let value = authorization.ok_or_else(missing)?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(value).map_err(|_| malformed())?,
    );
    bearer_token(&headers).map(str::to_owned).map_err(|e| match e {
        CredentialsError::Missing => missing(),
        _ => malformed(),
    })
}

fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.into(),
            ..Default::default()
        }),
        // Whatever the client sent under these names is replaced, never passed on.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn allowed(claims: &Claims) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                header(USER_ID, &claims.subject),
                header(USERNAME, &claims.username),
                header(ROLES, claims.roles.join(",")),
                header(SESSION_ID, &claims.session_id),
            ],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The answer to a request Validate would refuse with `status`: 401 for an authentication failure, 403
/// for anything else a client caused; `Err(status)` when auth-svc could not decide.
fn denied(status: Status, token_sent: bool) -> Result<CheckResponse, Status> {
    let http = match status.code() {
        Code::Unauthenticated => HttpStatusCode::Unauthorized,
        Code::PermissionDenied | Code::InvalidArgument | Code::FailedPrecondition => {
            HttpStatusCode::Forbidden
        }
        Code::ResourceExhausted => HttpStatusCode::TooManyRequests,
        _ => return Err(status),
    };
    let reason = reason::of(&status).map_or("", |reason| reason.as_str());
    let mut headers = vec![
        header("grpc-status", (status.code() as i32).to_string()),
        header("grpc-message", percent_encode(status.message())),
        header(REASON, reason),
    ];
    if !status.details().is_empty() {
        headers.push(header(
            "grpc-status-details-bin",
            STANDARD_NO_PAD.encode(status.details()),
        ));
    }
    if http == HttpStatusCode::Unauthorized {
        let challenge = match token_sent {
            true => r#"Bearer error="invalid_token""#,
            false => "Bearer",
        };
        headers.push(header("www-authenticate", challenge));
    }
    Ok(CheckResponse {
        status: Some(rpc::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body: format!("{}\n", status.message()),
        })),
        ..Default::default()
    })
}

/// `grpc-message` is percent-encoded: control characters, `%` and anything not ASCII (gRPC over HTTP/2).
fn percent_encode(message: &str) -> String {
    const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');
    utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_auth_svc_cannot_decide_is_an_error_for_the_gateway_to_fail_closed_on() {
        for status in [Status::unavailable("storage down"), Status::internal("bug")] {
            let code = status.code();
            assert_eq!(denied(status, true).map(|_| ()).unwrap_err().code(), code);
        }
        let refused = denied(Status::unauthenticated("token expired"), true).unwrap();
        let Some(HttpResponse::DeniedResponse(denied)) = refused.http_response else {
            panic!("a denial")
        };
        assert_eq!(denied.status.unwrap().code, HttpStatusCode::Unauthorized as i32);
    }

    #[test]
    fn the_descriptor_names_the_service_as_it_is_served() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(&descriptor_set()[..]).unwrap();
        let file = &set.file[0];
        let served = <envoy_types::ext_authz::v3::pb::AuthorizationServer<ExtAuthz> as tonic::server::NamedService>::NAME;
        assert_eq!(format!("{}.{}", file.package(), file.service[0].name()), served);
    }

    #[test]
    fn grpc_message_is_percent_encoded_as_grpc_asks() {
        assert_eq!(
            percent_encode("token expired: 100% sure\n¿"),
            "token expired: 100%25 sure%0A%C2%BF"
        );
    }

    #[test]
    fn the_bearer_token_is_what_follows_the_scheme() {
        assert_eq!(bearer(Some("Bearer abc.def.ghi")).unwrap(), "abc.def.ghi");
        assert!(matches!(bearer(None), Err(AuthError::Token(TokenError::Missing))));
        assert!(matches!(
            bearer(Some("Basic YTpi")),
            Err(AuthError::Token(TokenError::Malformed))
        ));
    }
}
