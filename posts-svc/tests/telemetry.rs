//! Traces and logs across the hop, with the real binaries: both services export spans over OTLP to a
//! receiver in this test (the collector's TraceService) and log JSON; one client call to posts-svc must be
//! one trace (posts-svc's server span, the guard's span, the client span of Validate, auth-svc's server
//! span, in that parentage), the JSON logs must carry its trace id, and no token, password or refresh
//! token may appear in any exported span or any log line.
//!
//! `auth-svc` is found beside `posts-svc` in the target directory; `cargo test --workspace` builds both.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use tonic::{Request, Response, Status, metadata::MetadataValue, transport::Channel};
use watchword::pb::{
    auth::v1::{
        LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest, auth_service_client::AuthServiceClient,
    },
    posts::v1::{ListPostsRequest, posts_service_client::PostsServiceClient},
};

const PASSWORD: &str = "a passphrase nobody should ever see";
/// The caller's trace: W3C trace id and parent span id, sampled.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// What the receiver got: each span with its service's name, and every request as text (for the grep).
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    raw: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        self.raw.lock().unwrap().push(format!("{request:?}"));
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref().and_then(|v| v.value.clone()))
                .map(|value| match value {
                    Value::StringValue(name) => name,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    self.spans.lock().unwrap().push((service.clone(), span));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A spawned service, killed when dropped; its stderr lines are kept.
struct Service {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn auth_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_posts-svc")).with_file_name("auth-svc");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace`",
        path.display()
    );
    path
}

/// Starts `binary` exporting to `collector` with JSON logs, once it has logged its gRPC address.
fn spawn(binary: &Path, args: &[String], collector: SocketAddr) -> Service {
    let mut child = Command::new(binary)
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-format", "json", "--otlp-endpoint"])
        .arg(format!("http://{collector}"))
        .env("RUST_LOG", "info")
        // Export within a tenth of a second instead of the SDK's 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_TRACES_SAMPLER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn service");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if json["message"] == "serving"
                && let Some(addr) = json["addr"].as_str()
            {
                let _ = tx.send(addr.to_owned());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("service logs its address")
        .parse()
        .unwrap();
    Service { child, addr, log }
}

fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .clone()?;
    Some(match value {
        Value::StringValue(s) => s,
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_is_one_trace_across_both_services_and_no_secret_is_exported_or_logged() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(incoming),
    );

    let dir = tempfile::tempdir().unwrap();
    let auth = spawn(
        &auth_binary(),
        &[
            "--database-url".into(),
            format!("sqlite://{}", dir.path().join("auth.db").display()),
        ],
        collector,
    );
    let posts = spawn(
        Path::new(env!("CARGO_BIN_EXE_posts-svc")),
        &[
            "--database-url".into(),
            format!("sqlite://{}", dir.path().join("posts.db").display()),
            "--auth-url".into(),
            format!("http://{}", auth.addr),
        ],
        collector,
    );

    let mut client = AuthServiceClient::new(channel(auth.addr));
    client
        .register(RegisterRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let login = client
        .login(LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let token = login.access_token.clone();

    // The call under test, as part of the caller's own trace.
    let mut request = Request::new(ListPostsRequest::default());
    let metadata = request.metadata_mut();
    metadata.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    metadata.insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")).unwrap(),
    );
    PostsServiceClient::new(channel(posts.addr))
        .list_posts(request)
        .await
        .unwrap();
    // The refresh token and the access token pass through auth-svc's other RPCs too.
    let refreshed = client
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut logout = Request::new(LogoutRequest::default());
    logout.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {}", refreshed.access_token)).unwrap(),
    );
    client.logout(logout).await.unwrap();

    // Wait for the four spans of the call's trace (and the Logout's span, the last thing exported).
    let of_trace = || -> Vec<(String, Span)> {
        receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, span)| hex(&span.trace_id) == TRACE_ID)
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logged_out = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .any(|(service, span)| service == "auth-svc" && span.name == "auth.v1.AuthService/Logout");
        if of_trace().len() >= 4 && logged_out {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans never arrived: {:#?}",
            of_trace()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = of_trace();
    let find = |service: &str, name: &str, kind: SpanKind| -> Span {
        spans
            .iter()
            .find(|(s, span)| s == service && span.name == name && span.kind == kind as i32)
            .map(|(_, span)| span.clone())
            .unwrap_or_else(|| panic!("no {kind:?} span {name} from {service} in {spans:#?}"))
    };
    let posts_server = find("posts-svc", "posts.v1.PostsService/ListPosts", SpanKind::Server);
    let guard = find("posts-svc", "guard", SpanKind::Internal);
    let validate_client = find("posts-svc", "auth.v1.AuthService/Validate", SpanKind::Client);
    let auth_server = find("auth-svc", "auth.v1.AuthService/Validate", SpanKind::Server);

    assert_eq!(
        hex(&posts_server.parent_span_id),
        CALLER_SPAN_ID,
        "continues the caller's trace"
    );
    assert_eq!(guard.parent_span_id, posts_server.span_id);
    assert_eq!(validate_client.parent_span_id, guard.span_id);
    assert_eq!(auth_server.parent_span_id, validate_client.span_id);

    for (span, service, method) in [
        (&posts_server, "posts.v1.PostsService", "ListPosts"),
        (&validate_client, "auth.v1.AuthService", "Validate"),
        (&auth_server, "auth.v1.AuthService", "Validate"),
    ] {
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"), "{span:?}");
        assert_eq!(
            attribute(span, "rpc.service").as_deref(),
            Some(service),
            "{span:?}"
        );
        assert_eq!(attribute(span, "rpc.method").as_deref(), Some(method), "{span:?}");
        assert_eq!(
            attribute(span, "rpc.grpc.status_code").as_deref(),
            Some("0"),
            "{span:?}"
        );
    }
    assert_eq!(
        attribute(&guard, "watchword.guard.decision").as_deref(),
        Some("allow")
    );
    assert_eq!(
        attribute(&guard, "watchword.guard.reason"),
        None,
        "an allowed call has no reason"
    );
    // The first call with a token: the cache (live feed or not) has to ask auth-svc.
    assert_eq!(
        attribute(&guard, "watchword.guard.cache").as_deref(),
        Some("miss")
    );

    // The JSON logs of both services carry the trace: posts-svc's call line and auth-svc's.
    let parse = |line: &String| {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    for (name, service) in [("posts-svc", &posts), ("auth-svc", &auth)] {
        let lines: Vec<serde_json::Value> = service.log.lock().unwrap().iter().map(parse).collect();
        for line in &lines {
            for field in ["timestamp", "level", "target", "message"] {
                assert!(line.get(field).is_some(), "{name}: {field} missing from {line}");
            }
        }
        let traced: Vec<_> = lines.iter().filter(|line| line["trace_id"] == TRACE_ID).collect();
        assert!(
            traced
                .iter()
                .any(|line| line["message"] == "call"
                    && line["span_id"].as_str().is_some_and(|id| id.len() == 16)),
            "{name}: no call line with the trace id in {lines:#?}"
        );
    }

    // No secret anywhere: not in an exported span, attribute or event, not in a log line.
    let exported = receiver.raw.lock().unwrap().join("\n");
    let logs = [&posts, &auth]
        .map(|s| s.log.lock().unwrap().join("\n"))
        .join("\n");
    for (what, secret) in [
        ("access token", token.as_str()),
        ("refreshed access token", refreshed.access_token.as_str()),
        ("password", PASSWORD),
        ("refresh token", login.refresh_token.as_str()),
        ("rotated refresh token", refreshed.refresh_token.as_str()),
        ("device token", login.device_token.as_str()),
    ] {
        assert!(!secret.is_empty());
        assert!(!exported.contains(secret), "the {what} was exported in a span");
        assert!(!logs.contains(secret), "the {what} was logged");
    }
    // The JWT's signature on its own is no less secret.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!exported.contains(signature) && !logs.contains(signature));
}
