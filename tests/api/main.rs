//! Integration tests: both services started in-process on port 0 through the same `serve` functions the
//! binaries use, talking real gRPC over loopback.

mod abuse;
mod apikeys;
mod at_rest;
mod audit;
mod auth;
mod cache;
mod extauthz;
mod grpc_web;
mod guard;
mod hardening;
mod helpers;
mod hostile;
mod levels;
mod lifecycle;
mod me;
mod metrics;
mod posts;
mod replicas;
mod schema;
mod tls;
mod wellknown;
