//! The real `auth-svc` binary: start-up on port 0, and SIGTERM handling with a stalled client.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A running auth-svc; killed if the test fails before it exits by itself.
struct Process(Option<Child>);

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the binary and returns it with the address it reports in its "serving" log line.
fn start(data_dir: &std::path::Path, grace: &str) -> (Process, SocketAddr, mpsc::Receiver<String>) {
    start_with(data_dir, grace, &[])
}

/// [`start`], with more arguments.
fn start_with(
    data_dir: &std::path::Path,
    grace: &str,
    args: &[&std::ffi::OsStr],
) -> (Process, SocketAddr, mpsc::Receiver<String>) {
    let child = Command::new(env!("CARGO_BIN_EXE_auth-svc"))
        .args(["--listen", "127.0.0.1:0", "--shutdown-grace", grace])
        // Tests run at once: the default admin port would collide.
        .args(["--admin-listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}", data_dir.join("auth.db").display()))
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn auth-svc");
    let mut process = Process(Some(child));
    let stderr = BufReader::new(process.0.as_mut().unwrap().stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("auth-svc logs that it is serving");
        // The gRPC address, not the admin server's.
        if !line.contains("admin serving")
            && let Some(addr) = line.split("addr=").nth(1)
        {
            let addr = addr.split_whitespace().next().unwrap().parse().unwrap();
            return (process, addr, rx);
        }
    }
}

fn terminate(process: &Process) {
    let pid = process.0.as_ref().unwrap().id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the process to exit, at most `limit`.
fn wait_for_exit(mut process: Process, limit: Duration) -> (ExitStatus, Duration) {
    let started = Instant::now();
    let mut child = process.0.take().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => (status.unwrap(), started.elapsed()),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("auth-svc still running {limit:?} after SIGTERM")
        }
    }
}

#[test]
fn sigterm_exits_zero_within_the_grace_period_even_with_a_stalled_client() {
    let dir = tempfile::tempdir().unwrap();
    let (process, addr, logs) = start(dir.path(), "1s");

    // A client that opens a connection, sends half an HTTP/2 preface and then nothing at all.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(b"PRI * HTTP/2.0\r\n").unwrap();

    terminate(&process);
    let (status, took) = wait_for_exit(process, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let logs: Vec<String> = logs.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("shutting down")),
        "no shutdown log in {logs:?}"
    );
}

#[test]
fn an_unusable_database_url_is_a_clear_start_up_failure() {
    let output = Command::new(env!("CARGO_BIN_EXE_auth-svc"))
        .args(["--database-url", "mysql://nope"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("database-url"), "{stderr}");
}

#[test]
fn bootstrap_admin_takes_the_password_from_the_environment_or_stdin_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("auth.db").display());
    let run = |username: &str, env_password: Option<&str>, stdin_password: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_auth-svc"));
        command
            .args(["--database-url", &db, "--bootstrap-admin", username])
            .env_remove("AUTH_SVC_BOOTSTRAP_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(password) = env_password {
            command.env("AUTH_SVC_BOOTSTRAP_PASSWORD", password);
        }
        let mut child = command.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{stdin_password}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };

    let from_env = run("root", Some("correct horse battery staple"), "");
    assert!(from_env.status.success(), "{from_env:?}");
    assert!(String::from_utf8_lossy(&from_env.stdout).contains("created admin root"));

    let from_stdin = run("ops", None, "another long passphrase");
    assert!(from_stdin.status.success(), "{from_stdin:?}");
    assert!(String::from_utf8_lossy(&from_stdin.stdout).contains("created admin ops"));

    // An existing account is promoted only by someone who knows its password (whoever registered the
    // name first must not become admin by the operator's command).
    let wrong = run("root", Some("whatever it is now"), "");
    assert!(!wrong.status.success(), "{wrong:?}");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("is not its password; nothing changed"),
        "{wrong:?}"
    );
    let again = run("root", Some("correct horse battery staple"), "");
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("granted admin to existing user root"));

    let weak = run("weakling", Some("short"), "");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("password"));
}

/// Writes a key-encryption key (32 random bytes, base64) to `path`, private to its owner.
fn write_kek(path: &std::path::Path) {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    std::fs::write(path, base64::engine::general_purpose::STANDARD.encode(key)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn keys_are_stored_unsealed_with_a_warning_until_a_key_encryption_key_seals_them_and_only_that_key_starts() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("auth.db").display());
    let (kek, other) = (dir.path().join("kek"), dir.path().join("other-kek"));
    write_kek(&kek);
    write_kek(&other);
    // `--bootstrap-admin` builds everything `serve` does, then exits: start-up as a command.
    let start = |kek: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_auth-svc"));
        command
            .args(["--database-url", &db, "--bootstrap-admin", "root"])
            .env("AUTH_SVC_BOOTSTRAP_PASSWORD", "correct horse battery staple")
            .env("RUST_LOG", "info");
        if let Some(kek) = kek {
            command.arg("--key-encryption-key-file").arg(kek);
        }
        let output = output_within(&mut command, Duration::from_secs(30));
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (status, stderr) = start(None);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("stored unsealed"), "no warning: {stderr}");

    let (status, stderr) = start(Some(&kek));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("sealed the stored keys"), "{stderr}");
    assert!(!stderr.contains("stored unsealed"), "{stderr}");

    let (status, stderr) = start(Some(&other));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("the key-encryption key does not open the stored keys"),
        "{stderr}"
    );
    let (status, stderr) = start(None);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--key-encryption-key-file"), "{stderr}");

    let (status, stderr) = start(Some(&kek));
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_second_auth_svc_on_the_same_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _addr, _log) = start(dir.path(), "5s");
    let second = Command::new(env!("CARGO_BIN_EXE_auth-svc"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.path().join("auth.db").display()))
        .output()
        .unwrap();
    assert!(!second.status.success(), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already served by another process"), "{stderr}");

    // Once the first has gone, the file is free again.
    drop(first);
    let (_again, _addr, _log) = start(dir.path(), "5s");
}

#[test]
fn a_second_auth_svc_through_a_symlink_to_the_same_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, _addr, _log) = start(dir.path(), "5s");
    let alias = dir.path().join("alias.db");
    std::os::unix::fs::symlink(dir.path().join("auth.db"), &alias).unwrap();
    let second = output_within(
        Command::new(env!("CARGO_BIN_EXE_auth-svc"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .arg("--database-url")
            .arg(format!("sqlite://{}", alias.display())),
        Duration::from_secs(10),
    );
    assert!(!second.status.success(), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already served by another process"), "{stderr}");
}

/// Runs `command` to its end, for at most `limit`: one that should have refused to start but serves
/// instead is killed, and the test fails with what it printed.
fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    run_within(command, limit).unwrap_or_else(|output| {
        panic!(
            "still running after {limit:?}; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Runs `command` to its end, or kills it after `limit` (then `Err` with what it printed).
fn run_within(command: &mut Command, limit: Duration) -> Result<std::process::Output, std::process::Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn auth-svc");
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

/// An Ed25519 key for tests only (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it).
const TEST_SIGNING_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIA/CPRjAus/xe8GSxG0pQSOF1XnzLNUNUSC51ZOXH/MF
-----END PRIVATE KEY-----
";

/// One bad start-up configuration: arguments, environment, and the flag the refusal must name.
struct BadStart {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    flag: &'static str,
}

const fn bad(args: &'static [&'static str], flag: &'static str) -> BadStart {
    BadStart { args, env: &[], flag }
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
                "postgres://auth:hunter2@127.0.0.1:1/auth?sslmode=verify",
            ],
            "sslmode",
        ),
        bad(
            &[
                "--database-url",
                "postgres://auth:hunter2@127.0.0.1:1/auth?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            ],
            "sslrootcert",
        ),
        bad(&["--access-token-ttl", "0s"], "--access-token-ttl"),
        bad(&["--access-token-ttl", "25h"], "--access-token-ttl"),
        bad(&["--refresh-token-ttl", "100years"], "--refresh-token-ttl"),
        bad(&["--refresh-token-ttl", "0s"], "--refresh-token-ttl"),
        bad(&["--refresh-reuse-grace", "1h"], "--refresh-reuse-grace"),
        bad(&["--refresh-reuse-grace", "100years"], "--refresh-reuse-grace"),
        bad(&["--issuer", ""], "--issuer"),
        bad(&["--issuer", "tab\there"], "--issuer"),
        bad(&["--audience", ""], "--audience"),
        bad(
            &["--signing-key-file", "/nonexistent/key.pem"],
            "--signing-key-file",
        ),
        bad(
            &["--key-encryption-key-file", "/nonexistent/kek"],
            "--key-encryption-key-file",
        ),
        bad(&["--min-password-length", "7"], "--min-password-length"),
        bad(&["--lockout-threshold", "0"], "--lockout-threshold"),
        bad(&["--lockout-threshold", "4294967295"], "--lockout-threshold"),
        bad(&["--peer-rate", "NaN"], "--peer-rate"),
        bad(&["--peer-rate", "inf"], "--peer-rate"),
        bad(&["--peer-rate=-1"], "--peer-rate"),
        bad(&["--peer-rate", "1e-300"], "--peer-rate"),
        bad(&["--peer-burst", "0"], "--peer-burst"),
        bad(&["--peer-burst", "4000000000"], "--peer-burst"),
        bad(&["--db-max-connections", "0"], "--db-max-connections"),
        bad(&["--db-max-connections", "100000"], "--db-max-connections"),
        bad(&["--db-acquire-timeout", "0s"], "--db-acquire-timeout"),
        bad(&["--db-acquire-timeout", "100years"], "--db-acquire-timeout"),
        bad(&["--shutdown-grace", "0s"], "--shutdown-grace"),
        bad(&["--shutdown-grace", "100years"], "--shutdown-grace"),
        bad(&["--trusted-proxies", "10.0.0.0/33"], "--trusted-proxies"),
        bad(&["--trusted-proxies", "a-proxy"], "--trusted-proxies"),
        bad(
            &["--max-revocation-subscribers", "0"],
            "--max-revocation-subscribers",
        ),
        // Plaintext served off loopback.
        bad(&["--listen", "0.0.0.0:0"], "--insecure-listen"),
        bad(&["--listen", "[::]:0"], "--insecure-listen"),
        bad(&["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert"),
        bad(&["--tls-cert", "/etc/hostname"], "--tls-cert"),
        bad(&["--tls-key", "/nonexistent/key.pem"], "--tls-key"),
        bad(&["--tls-client-ca", "/nonexistent/ca.pem"], "--tls-client-ca"),
        // Without a client CA there is no certificate to check a name on.
        bad(&["--internal-clients", "posts-svc"], "--tls-client-ca"),
        bad(&["--tls-handshake-timeout", "0s"], "--tls-handshake-timeout"),
        bad(&["--max-connections", "0"], "--max-connections"),
        bad(&["--max-connection-age", "1s"], "--max-connection-age"),
        bad(&["--default-role", "admin"], "--default-role"),
        bad(&["--api-key-max-ttl", "0s"], "--api-key-max-ttl"),
        bad(&["--api-key-max-ttl", "100years"], "--api-key-max-ttl"),
        bad(&["--audit-retention", "1h"], "--audit-retention"),
        bad(&["--audit-retention", "100years"], "--audit-retention"),
        BadStart {
            args: &[],
            env: &[("AUTH_SVC_DEFAULT_ROLE", "admin")],
            flag: "--default-role",
        },
        // The environment goes through the same checks, and the refusal still names the flag.
        BadStart {
            args: &[],
            env: &[("AUTH_SVC_PEER_RATE", "NaN")],
            flag: "--peer-rate",
        },
        BadStart {
            args: &[],
            env: &[("AUTH_SVC_REFRESH_TOKEN_TTL", "100years")],
            flag: "--refresh-token-ttl",
        },
        BadStart {
            args: &[],
            env: &[("AUTH_SVC_MAX_CONNECTIONS", "0")],
            flag: "--max-connections",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    // All at once, so the whole table takes one deadline; each has its own database so that, unfixed,
    // they would all start.
    let runs: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_auth-svc"));
            if !case.args.contains(&"--listen") {
                command.args(["--listen", "127.0.0.1:0", "--admin-listen", "off"]);
            }
            if !case.args.contains(&"--database-url") {
                command.arg("--database-url").arg(format!(
                    "sqlite://{}",
                    dir.path().join(format!("{i}.db")).display()
                ));
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

#[test]
fn a_signing_key_file_others_can_read_is_refused_until_it_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing-key.pem");
    std::fs::write(&key, TEST_SIGNING_KEY).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let output = output_within(
            Command::new(env!("CARGO_BIN_EXE_auth-svc"))
                .args(["--listen", "127.0.0.1:0"])
                .arg("--database-url")
                .arg(format!("sqlite://{}", dir.path().join("auth.db").display()))
                .arg("--signing-key-file")
                .arg(&key),
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "mode {mode:o}: {stderr}");
        assert!(stderr.contains(&key.display().to_string()), "{stderr}");
        assert!(stderr.contains("chmod 600"), "{stderr}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_serving, _addr, _log) = start_with(
        dir.path(),
        "5s",
        &["--signing-key-file".as_ref(), key.as_os_str()],
    );
}
