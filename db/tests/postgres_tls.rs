//! `sslmode` and `sslrootcert` against a real PostgreSQL server with a certificate made here: a private
//! cluster with `ssl = on` that accepts TLS connections only. Skipped when PostgreSQL's server binaries are
//! not installed (CI installs them: `.ci/postgres`).

use std::time::Duration;

use watchword_db::{
    DbError,
    postgres::{PoolOptions, Postgres},
};
use watchword_testing::{PrivatePostgres, ServerTls, TestCa};

fn options() -> PoolOptions {
    PoolOptions {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(10),
    }
}

/// Connects with `url`, and says whether the session is encrypted.
async fn encrypted(url: &str) -> Result<bool, DbError> {
    let db = Postgres::connect(url, &options(), &[]).await?;
    let row = db
        .client()
        .await?
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn each_sslmode_encrypts_and_verifies_the_server_as_libpq_does() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (TestCa::new("watchword test CA"), TestCa::new("someone else's CA"));
    let (cert_pem, key_pem) = ca.server_cert(&["localhost", "127.0.0.1"]);
    let Some(pg) = PrivatePostgres::create_with_tls(&ServerTls {
        cert_pem,
        key_pem,
        tls_only: true,
    }) else {
        eprintln!("skipped: PostgreSQL server binaries not installed (.ci/postgres installs them)");
        return;
    };
    let (ca_file, other_ca_file) = (
        ca.write_cert(dir.path(), "ca.pem"),
        other_ca.write_cert(dir.path(), "other-ca.pem"),
    );
    let port = pg.port();
    // `hostaddr` connects to 127.0.0.1 while the name checked is the URL's host, as in libpq.
    let url = |host: &str, params: &str| format!("postgres://postgres@{host}:{port}/postgres?{params}");
    let ca = format!("sslrootcert={}", ca_file.display());
    let other_ca = format!("sslrootcert={}", other_ca_file.display());

    // Accepted, and encrypted.
    for (host, params) in [
        ("localhost", format!("sslmode=verify-full&{ca}")),
        ("127.0.0.1", format!("sslmode=verify-full&{ca}")),
        // verify-ca checks the chain only: a name the certificate does not carry is fine.
        (
            "db.elsewhere.test",
            format!("sslmode=verify-ca&{ca}&hostaddr=127.0.0.1"),
        ),
        // require and prefer encrypt without checking the certificate at all.
        ("127.0.0.1", "sslmode=require".to_owned()),
        ("127.0.0.1", "sslmode=prefer".to_owned()),
    ] {
        let url = url(host, &params);
        assert_eq!(encrypted(&url).await.map_err(|e| format!("{url}: {e}")), Ok(true));
    }

    // Refused, with the reason in the error.
    for (host, params, why) in [
        (
            "db.elsewhere.test",
            format!("sslmode=verify-full&{ca}&hostaddr=127.0.0.1"),
            "certificate not valid for name \"db.elsewhere.test\"",
        ),
        (
            "localhost",
            format!("sslmode=verify-full&{other_ca}"),
            "UnknownIssuer",
        ),
        (
            "localhost",
            format!("sslmode=verify-ca&{other_ca}"),
            "UnknownIssuer",
        ),
        // With a root certificate file, libpq's require checks the chain too.
        (
            "localhost",
            format!("sslmode=require&{other_ca}"),
            "UnknownIssuer",
        ),
        // The server accepts TLS connections only (`hostssl`).
        ("127.0.0.1", "sslmode=disable".to_owned(), "no encryption"),
        ("127.0.0.1", String::new(), "no encryption"),
    ] {
        let url = url(host, &params);
        match encrypted(&url).await {
            Ok(_) => panic!("{url}: connected"),
            Err(error) => assert!(error.to_string().contains(why), "{url}: {error}"),
        }
    }
}
