//! The real `posts-svc` binary refuses a bad configuration at start: exit status 2 (a usage error) and a
//! message naming the flag, never a panic and never a server running with a value it cannot honour.

use std::{
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

/// One bad start-up configuration: arguments, environment, and the flag the refusal must name.
struct BadStart {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    flag: &'static str,
}

const fn bad(args: &'static [&'static str], flag: &'static str) -> BadStart {
    BadStart { args, env: &[], flag }
}

/// Runs `command` to its end, or kills it after `limit` (then `Err` with what it printed).
fn run_within(command: &mut Command, limit: Duration) -> Result<Output, Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn posts-svc");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => Ok(output.unwrap()),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            Err(rx.recv().unwrap().unwrap())
        }
    }
}

#[test]
fn every_flag_out_of_range_is_a_usage_error_naming_it() {
    let cases = [
        bad(&["--listen", "nope"], "--listen"),
        bad(&["--database-url", "mysql://x"], "--database-url"),
        // Checked before connecting, with the parameter named and the password never repeated.
        bad(
            &[
                "--database-url",
                "postgres://posts:hunter2@127.0.0.1:1/posts?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            ],
            "sslrootcert",
        ),
        bad(&["--auth-url", "not a url"], "--auth-url"),
        bad(&["--auth-url", "127.0.0.1:50051"], "--auth-url"),
        bad(&["--auth-url", "ftp://127.0.0.1:50051"], "--auth-url"),
        bad(&["--auth-url", ""], "--auth-url"),
        // Plaintext to an auth-svc that is not on this machine: whoever answers decides which tokens pass.
        bad(
            &["--auth-url", "http://10.0.0.1:50051"],
            "--allow-insecure-auth-url",
        ),
        bad(
            &["--auth-url", "http://auth.internal:50051"],
            "--allow-insecure-auth-url",
        ),
        // TLS options for a plaintext URL would be silently unused.
        bad(&["--auth-ca", "/etc/hostname"], "--auth-ca"),
        bad(
            &["--auth-client-cert", "/nonexistent/cert.pem"],
            "--auth-client-cert",
        ),
        // Plaintext served off loopback.
        bad(&["--listen", "0.0.0.0:0"], "--insecure-listen"),
        bad(&["--listen", "[::]:0"], "--insecure-listen"),
        bad(&["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert"),
        bad(&["--tls-key", "/nonexistent/key.pem"], "--tls-key"),
        bad(&["--tls-handshake-timeout", "0s"], "--tls-handshake-timeout"),
        bad(&["--max-connections", "0"], "--max-connections"),
        bad(&["--max-connection-age", "1s"], "--max-connection-age"),
        bad(&["--auth-timeout", "0s"], "--auth-timeout"),
        bad(&["--auth-timeout", "1h"], "--auth-timeout"),
        bad(&["--verify", "sometimes"], "--verify"),
        bad(&["--validate-cache-ttl", "2h"], "--validate-cache-ttl"),
        bad(&["--validate-cache-ttl", "100years"], "--validate-cache-ttl"),
        bad(&["--validate-cache-size", "0"], "--validate-cache-size"),
        bad(&["--validate-cache-size", "100000000"], "--validate-cache-size"),
        bad(&["--jwks-refetch-interval", "0s"], "--jwks-refetch-interval"),
        bad(
            &["--jwks-refetch-interval", "100years"],
            "--jwks-refetch-interval",
        ),
        bad(&["--db-max-connections", "0"], "--db-max-connections"),
        bad(&["--db-max-connections", "100000"], "--db-max-connections"),
        bad(&["--db-acquire-timeout", "0s"], "--db-acquire-timeout"),
        bad(&["--db-acquire-timeout", "100years"], "--db-acquire-timeout"),
        bad(&["--shutdown-grace", "0s"], "--shutdown-grace"),
        bad(&["--shutdown-grace", "100years"], "--shutdown-grace"),
        bad(&["--admin-listen", "9052"], "--admin-listen"),
        bad(&["--log-format", "xml"], "--log-format"),
        bad(&["--otlp-endpoint", "https://127.0.0.1:4317"], "--otlp-endpoint"),
        // The environment goes through the same checks, and the refusal still names the flag.
        BadStart {
            args: &[],
            env: &[("POSTS_SVC_AUTH_TIMEOUT", "0s")],
            flag: "--auth-timeout",
        },
        BadStart {
            args: &[],
            env: &[("POSTS_SVC_VALIDATE_CACHE_SIZE", "0")],
            flag: "--validate-cache-size",
        },
        BadStart {
            args: &[],
            env: &[("POSTS_SVC_MAX_CONNECTIONS", "0")],
            flag: "--max-connections",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    // All at once, so the whole table takes one deadline; each has its own database so that, unchecked,
    // they would all start (auth-svc need not be up for that).
    let runs: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_posts-svc"));
            if !case.args.contains(&"--listen") {
                command.args(["--listen", "127.0.0.1:0"]);
            }
            if !case.args.contains(&"--admin-listen") {
                command.args(["--admin-listen", "127.0.0.1:0"]);
            }
            if !case.args.contains(&"--database-url") {
                command.arg("--database-url").arg(format!(
                    "sqlite://{}",
                    dir.path().join(format!("{i}.db")).display()
                ));
            }
            if !case.args.contains(&"--auth-url") {
                command.args(["--auth-url", "http://127.0.0.1:1"]);
            }
            command.args(case.args).envs(case.env.iter().copied());
            std::thread::spawn(move || run_within(&mut command, Duration::from_secs(10)))
        })
        .collect();
    let mut wrong = Vec::new();
    for (case, run) in cases.iter().zip(runs) {
        let what = format!("{:?} {:?}", case.env, case.args);
        match run.join().unwrap() {
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                if output.status.code() != Some(2)
                    || !stderr.contains(case.flag)
                    || stderr.contains("panicked")
                    || stderr.contains("hunter2")
                {
                    wrong.push(format!("{what}: {:?}\n{stderr}", output.status));
                }
            }
            Err(_) => wrong.push(format!("{what}: still serving after 10s")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
