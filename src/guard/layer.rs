//! The tower layer itself: [`AuthLayer`] wraps one gRPC service in [`RequireAuth`], which validates each
//! call's bearer token, checks the [`Policy`] (a level at least, or exact roles, per method), and hands the
//! handler an [`Identity`].

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use opentelemetry::{
    Context as TraceContext, KeyValue,
    context::FutureExt as _,
    trace::{TraceContextExt as _, Tracer as _},
};
use tonic::{Status, server::NamedService};
use tower::{Layer, Service};

use super::{GuardError, GuardValidator, Identity, Validator};
use crate::{credentials::bearer_token, metrics::Metrics, reason::Reason, roles::Level};

/// `watchword_guard_decisions_total`, one series per decision and reason.
pub(crate) struct Decisions {
    metrics: Metrics,
    allow: metrics::Counter,
    /// By position in [`Reason::ALL`], registered on first use (the likely ones at once, so they show as 0).
    refused: Vec<OnceLock<metrics::Counter>>,
}

const DECISIONS: &str = "watchword_guard_decisions_total";
const DECISIONS_HELP: &str = "Calls the guard decided: allow (reason \"\"), deny (the ErrorInfo reason sent), or \
     unavailable (no verdict could be had: AUTH_UNAVAILABLE).";

impl Decisions {
    pub(crate) fn new(metrics: &Metrics) -> Self {
        let decisions = Self {
            metrics: metrics.clone(),
            allow: metrics.counter(
                DECISIONS,
                DECISIONS_HELP,
                &[("decision", "allow"), ("reason", "")],
            ),
            refused: Reason::ALL.iter().map(|_| OnceLock::new()).collect(),
        };
        for reason in [
            Reason::TokenMissing,
            Reason::TokenMalformed,
            Reason::TokenExpired,
            Reason::TokenRevoked,
            Reason::TokenInvalid,
            Reason::UserDisabled,
            Reason::RoleRequired,
            Reason::AuthUnavailable,
        ] {
            decisions.refused(reason);
        }
        decisions
    }

    fn refused(&self, reason: Reason) -> &metrics::Counter {
        let index = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.refused[index].get_or_init(|| {
            self.metrics.counter(
                DECISIONS,
                DECISIONS_HELP,
                &[("decision", decision(reason)), ("reason", reason.as_str())],
            )
        })
    }
}

/// The decision a refusal for `reason` is: only a missing verdict is not a denial.
fn decision(reason: Reason) -> &'static str {
    match reason {
        Reason::AuthUnavailable => "unavailable",
        _ => "deny",
    }
}

/// Which roles may call which methods of a guarded service.
///
/// Declared once, as a table, next to the service it protects. A method missing from the table is
/// refused (`PERMISSION_DENIED`): adding an RPC without deciding who may call it fails closed.
#[derive(Debug, Clone, Copy)]
pub enum Policy {
    /// Any holder of a valid token may call any method.
    AnyAuthenticated,
    /// `(full method path, what its caller needs)`.
    Table(&'static [(&'static str, Require)]),
}

/// What a method asks of its caller's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Require {
    /// A level at least this high ([`Level`]: `guest` < `user` < `admin`), so an admin may call what a user
    /// may. The usual entry.
    AtLeast(Level),
    /// At least one of these roles, exactly as named (for roles that are not levels, or a method only
    /// those roles may call whatever their level).
    AnyOf(&'static [&'static str]),
}

impl Require {
    /// Whether a caller holding `roles` may call.
    pub fn admits<S: AsRef<str>>(&self, roles: &[S]) -> bool {
        match self {
            Self::AtLeast(least) => Level::of(roles).is_some_and(|level| level >= *least),
            Self::AnyOf(any) => roles.iter().any(|role| any.contains(&role.as_ref())),
        }
    }
}

impl std::fmt::Display for Require {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AtLeast(level) => write!(f, "the role {level} or a higher one"),
            Self::AnyOf(roles) => write!(f, "one of the roles {roles:?}"),
        }
    }
}

/// What an unlisted method requires: nothing anyone holds.
const NOBODY: Require = Require::AnyOf(&[]);

impl Policy {
    fn check(&self, path: &str, identity: &Identity) -> Result<(), GuardError> {
        let Self::Table(table) = self else {
            return Ok(());
        };
        let required = table
            .iter()
            .find(|(method, _)| *method == path)
            .map_or(NOBODY, |(_, required)| *required);
        if required.admits(&identity.roles) {
            Ok(())
        } else {
            Err(GuardError::RoleRequired { required })
        }
    }
}

/// Layer that wraps a service in [`RequireAuth`].
pub struct AuthLayer<V> {
    validator: Arc<V>,
    policy: Policy,
    decisions: Arc<Decisions>,
}

impl<V> AuthLayer<V> {
    /// A guard that admits any valid token; see [`AuthLayer::with_policy`] to require roles.
    pub fn new(validator: V) -> Self {
        Self {
            validator: Arc::new(validator),
            policy: Policy::AnyAuthenticated,
            decisions: Arc::new(Decisions::new(&Metrics::disabled())),
        }
    }

    /// Counts its decisions in `metrics` (`watchword_guard_decisions_total`).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.decisions = Arc::new(Decisions::new(metrics));
        self
    }

    #[cfg(test)]
    pub(super) fn validator(&self) -> &V {
        &self.validator
    }

    /// Checks each call's method against `policy` after validating its token.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
}

impl<V> Clone for AuthLayer<V> {
    fn clone(&self) -> Self {
        Self {
            validator: Arc::clone(&self.validator),
            policy: self.policy,
            decisions: Arc::clone(&self.decisions),
        }
    }
}

impl<S, V> Layer<S> for AuthLayer<V> {
    type Service = RequireAuth<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuth {
            inner,
            validator: Arc::clone(&self.validator),
            policy: self.policy,
            decisions: Arc::clone(&self.decisions),
        }
    }
}

/// A service that validates the bearer token of every request before calling `inner`.
pub struct RequireAuth<S, V = GuardValidator> {
    inner: S,
    validator: Arc<V>,
    policy: Policy,
    decisions: Arc<Decisions>,
}

impl<S: Clone, V> Clone for RequireAuth<S, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            validator: Arc::clone(&self.validator),
            policy: self.policy,
            decisions: Arc::clone(&self.decisions),
        }
    }
}

// Keeps the wrapped service's gRPC name, so the router sends `posts.v1.PostsService/*` here and nothing else.
impl<S: NamedService, V> NamedService for RequireAuth<S, V> {
    const NAME: &'static str = S::NAME;
}

impl<S, V, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequireAuth<S, V>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
    V: Validator,
{
    type Response = http::Response<ResBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // `self.inner` is the clone that was driven to ready; take it and leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let validator = Arc::clone(&self.validator);
        let policy = self.policy;
        let decisions = Arc::clone(&self.decisions);
        Box::pin(async move {
            // The decision's own span (the cache records hit, miss or shared on it), under the call's, while
            // traces are exported.
            let trace = crate::telemetry::tracer().map(|tracer| {
                TraceContext::map_current(|call| call.with_span(tracer.start_with_context("guard", call)))
            });
            let token = bearer_token(request.headers());
            let verdict = async {
                match token {
                    Ok(token) => validator.validate(token).await,
                    Err(e) => Err(GuardError::Credentials(e)),
                }
            };
            let verdict = match &trace {
                Some(trace) => verdict.with_context(trace.clone()).await,
                None => verdict.await,
            };
            let verdict = verdict.and_then(|identity| {
                policy.check(request.uri().path(), &identity)?;
                Ok(identity)
            });
            // Ends the span on every path, before the handler runs: it times the decision alone.
            let decided = |attributes: [Option<KeyValue>; 2]| {
                if let Some(trace) = &trace {
                    let span = trace.span();
                    span.set_attributes(attributes.into_iter().flatten());
                    span.end();
                }
            };
            match verdict {
                Ok(identity) => {
                    decisions.allow.increment(1);
                    decided([Some(KeyValue::new("watchword.guard.decision", "allow")), None]);
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Err(error) => {
                    let reason = error.reason();
                    decisions.refused(reason).increment(1);
                    decided([
                        Some(KeyValue::new("watchword.guard.decision", decision(reason))),
                        Some(KeyValue::new("watchword.guard.reason", reason.as_str())),
                    ]);
                    tracing::debug!(%error, "guard refused call");
                    Ok(Status::from(error).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy::Table(&[
        ("/t.v1.T/Read", Require::AtLeast(Level::Guest)),
        ("/t.v1.T/Write", Require::AtLeast(Level::User)),
        ("/t.v1.T/Audit", Require::AnyOf(&["auditor", "admin"])),
    ]);

    fn caller(roles: &[&str]) -> Identity {
        let now = std::time::SystemTime::now();
        Identity {
            user_id: "u".into(),
            username: "u".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            token_id: "t".into(),
            session_id: "s".into(),
            issue_time: now,
            expire_time: now,
            key_id: "k".into(),
        }
    }

    fn allowed(path: &str, roles: &[&str]) -> bool {
        POLICY.check(path, &caller(roles)).is_ok()
    }

    #[test]
    fn at_least_admits_every_higher_level_and_any_of_only_the_roles_named() {
        assert!(allowed("/t.v1.T/Read", &["guest"]));
        assert!(allowed("/t.v1.T/Read", &["user"]));
        assert!(allowed("/t.v1.T/Read", &["admin"]));
        assert!(!allowed("/t.v1.T/Write", &["guest"]));
        assert!(allowed("/t.v1.T/Write", &["guest", "user"]));
        assert!(allowed("/t.v1.T/Write", &["admin"]));
        assert!(!allowed("/t.v1.T/Read", &[]), "no role, no level");
        assert!(
            !allowed("/t.v1.T/Read", &["auditor"]),
            "a role that is not a level"
        );
        assert!(allowed("/t.v1.T/Audit", &["auditor"]));
        assert!(allowed("/t.v1.T/Audit", &["admin"]));
        assert!(!allowed("/t.v1.T/Audit", &["user"]));
        assert!(
            !allowed("/t.v1.T/Unlisted", &["admin"]),
            "unlisted methods fail closed"
        );
        let Err(GuardError::RoleRequired { required }) = POLICY.check("/t.v1.T/Write", &caller(&["guest"]))
        else {
            panic!("a guest may not write")
        };
        assert_eq!(required.to_string(), "the role user or a higher one");
        assert!(
            Policy::AnyAuthenticated
                .check("/t.v1.T/Unlisted", &caller(&[]))
                .is_ok()
        );
    }
}
