//! Watchword: JWT authentication for gRPC microservices.
//!
//! This crate is what every Watchword service (and any other tonic service) shares:
//! - [`pb`]: the generated protobuf/gRPC types of `proto/`, plus descriptor sets for reflection;
//! - [`guard`]: the async tower layer that lets no call reach a handler without a validated token, built
//!   with [`guard::Guard::builder`] in one of three modes: ask auth-svc every call, the same with a
//!   revocation-aware cache, or verify with auth-svc's JWKS (the last two follow auth-svc's revocation
//!   stream);
//! - [`reason`]: the `ErrorInfo` reasons clients can act on;
//! - [`roles`]: the roles as ordered levels (`guest` < `user` < `admin`), which guard policies compare;
//! - [`token`]: access-token verification shared by auth-svc and the guard's local mode;
//! - [`credentials`]: parsing of `authorization` metadata (Bearer and Basic);
//! - [`server`]: the transport limits, per-call logging and graceful shutdown both services use;
//! - [`web`]: gRPC-Web and CORS, so browsers call the same ports;
//! - [`transport`]: how connections are accepted (TLS that reloads its certificate, connection cap and
//!   age) and how a client reaches a TLS service ([`transport::ClientTls`]);
//! - [`observe`]: per-RPC metrics and spans, for servers and for the guard's client;
//! - [`metrics`]: a service's Prometheus registry; [`admin`]: the HTTP server of `/metrics`, `/livez`
//!   and `/readyz`;
//! - [`telemetry`]: log (text or JSON) and trace (OTLP) set-up for the binaries.

pub mod admin;
pub mod credentials;
pub mod flags;
pub mod guard;
pub mod metrics;
pub mod observe;
pub mod pagination;
pub mod pb;
pub mod reason;
pub mod roles;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod transport;
pub mod web;
