//! Keys at rest: with `--key-encryption-key-file`, the private signing keys and the refresh-token pepper are
//! stored sealed, so what a copy of the database holds mints nothing. Each test reads the rows past
//! auth-svc (the SQLite file itself, or the PostgreSQL rows), on whichever backend the suite runs on.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;
use tokio::net::TcpListener;
use watchword::pb::auth::v1 as pb;
use watchword_db::{DatabaseUrl, postgres::tokio_postgres::NoTls};

use crate::helpers::{PASSWORD, TestApp, bearer, spawn_app};

const MARK: &str = auth_svc::sealing::SEALED_MARK;

/// Writes a fresh key-encryption key (32 random bytes, base64, mode 0600) to `dir/name`.
fn write_kek(dir: &Path, name: &str) -> PathBuf {
    let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    let path = dir.join(name);
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode(bytes) + "\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// The app with its keys sealed under a key-encryption key kept in the returned directory.
async fn app_with_kek() -> (TestApp, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let kek = write_kek(keys.path(), "kek");
    let app = TestApp::builder()
        .auth(move |settings| settings.key_encryption_key_file = Some(kek))
        .start()
        .await;
    (app, keys)
}

/// A signing key row as stored: (kid, private key column, public key column).
type KeyRow = (String, String, Option<Vec<u8>>);

/// What the database holds, read past auth-svc: the signing keys and the secrets, in a stable order.
async fn stored(url: &DatabaseUrl) -> (Vec<KeyRow>, Vec<(String, Vec<u8>)>) {
    const KEYS: &str = "SELECT kid, private_key_pem, public_key FROM signing_keys ORDER BY kid";
    const SECRETS: &str = "SELECT name, value FROM secrets ORDER BY name";
    match url {
        DatabaseUrl::Sqlite(path) => {
            let conn = watchword_db::rusqlite::Connection::open_with_flags(
                path,
                watchword_db::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let keys = conn
                .prepare(KEYS)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let secrets = conn
                .prepare(SECRETS)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            (keys, secrets)
        }
        DatabaseUrl::Postgres(url) => {
            let client = pg_client(url).await;
            let keys = client.query(KEYS, &[]).await.unwrap();
            let secrets = client.query(SECRETS, &[]).await.unwrap();
            (
                keys.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(),
                secrets.iter().map(|r| (r.get(0), r.get(1))).collect(),
            )
        }
    }
}

async fn pg_client(url: &str) -> watchword_db::postgres::tokio_postgres::Client {
    let (client, connection) = watchword_db::postgres::tokio_postgres::connect(url, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The bytes of an SQLite database's files (the database and its WAL); nothing for PostgreSQL.
fn sqlite_files(url: &DatabaseUrl) -> Vec<u8> {
    let DatabaseUrl::Sqlite(path) = url else {
        return Vec::new();
    };
    let mut bytes = std::fs::read(path).unwrap();
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    bytes.extend(std::fs::read(wal).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every private key and secret is sealed, and each key's public key is stored beside it.
fn assert_sealed((keys, secrets): &(Vec<KeyRow>, Vec<(String, Vec<u8>)>)) {
    assert!(!keys.is_empty() && !secrets.is_empty());
    for (kid, private_key, public_key) in keys {
        assert!(private_key.starts_with(MARK), "{kid}: {private_key}");
        assert!(!private_key.contains("PRIVATE KEY"), "{kid}");
        assert_eq!(public_key.as_ref().map(Vec::len), Some(32), "{kid}");
    }
    for (name, value) in secrets {
        assert!(value.starts_with(MARK.as_bytes()), "{name}");
    }
}

async fn jwks_kids(app: &crate::helpers::TestApp) -> Vec<String> {
    let jwks = app
        .auth
        .clone()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    jwks.keys.into_iter().map(|k| k.kid).collect()
}

/// Starts auth-svc with `settings` and returns why it refused to start.
async fn refused_start(settings: auth_svc::Settings) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serving = auth_svc::serve(listener, settings, std::future::pending());
    let result = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("auth-svc refuses at start instead of serving");
    result.expect_err("auth-svc must refuse to start").to_string()
}

#[tokio::test]
async fn with_a_key_encryption_key_keys_and_the_pepper_are_stored_sealed_through_rotation_and_revocation() {
    let (app, _keys) = app_with_kek().await;
    let root = app.admin_token("root").await;
    app.register("alice").await.unwrap();
    let first = app.login("alice", PASSWORD).await.unwrap();
    let old_kid = jwks_kids(&app).await[0].clone();

    let new_kid = app
        .auth
        .clone()
        .rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &root))
        .await
        .unwrap()
        .into_inner()
        .kid;
    let second = app.login("alice", PASSWORD).await.unwrap();
    app.validate(&first.access_token).await.unwrap();
    assert_eq!(app.validate(&second.access_token).await.unwrap().key_id, new_kid);
    // Revoking the signing key makes a new (sealed) one sign.
    let signing = app
        .auth
        .clone()
        .revoke_signing_key(bearer(
            pb::RevokeSigningKeyRequest { kid: new_kid.clone() },
            &root,
        ))
        .await
        .unwrap()
        .into_inner()
        .signing_kid;
    assert!(app.validate(&second.access_token).await.is_err());
    let third = app.login("alice", PASSWORD).await.unwrap();
    assert_eq!(app.validate(&third.access_token).await.unwrap().key_id, signing);
    app.refresh(&third.refresh_token).await.unwrap();

    let rows = stored(&app.auth_settings.database_url).await;
    assert_sealed(&rows);
    let kids: Vec<&str> = rows.0.iter().map(|(kid, ..)| kid.as_str()).collect();
    for kid in [&old_kid, &new_kid, &signing] {
        assert!(kids.contains(&kid.as_str()), "{kid} in {kids:?}");
    }
    let files = sqlite_files(&app.auth_settings.database_url);
    assert!(!contains(&files, b"PRIVATE KEY"), "a PEM in the SQLite files");
}

#[tokio::test]
async fn an_unsealed_database_is_sealed_at_the_first_start_with_a_key_encryption_key_and_keeps_its_tokens() {
    let mut app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let kid = app.validate(&login.access_token).await.unwrap().key_id;
    let url = app.auth_settings.database_url.clone();
    let (keys, secrets) = stored(&url).await;
    assert!(keys[0].1.contains("PRIVATE KEY"), "stored unsealed without a key");
    let pepper = secrets[0].1.clone();
    assert_eq!(pepper.len(), 32);

    let addr = app.stop_auth().await;
    // As a database from before public keys were stored has them.
    match &url {
        DatabaseUrl::Sqlite(path) => {
            watchword_db::rusqlite::Connection::open(path)
                .unwrap()
                .execute("UPDATE signing_keys SET public_key = NULL", [])
                .unwrap();
        }
        DatabaseUrl::Postgres(pg) => {
            pg_client(pg)
                .await
                .execute("UPDATE signing_keys SET public_key = NULL", &[])
                .await
                .unwrap();
        }
    }
    app.auth_settings.key_encryption_key_file = Some(write_kek(app.dir.path(), "kek"));
    app.restart_auth(addr).await;

    // The same key signs and the same pepper keys refresh tokens: what was issued before still works.
    app.validate(&login.access_token).await.unwrap();
    let refreshed = app.refresh(&login.refresh_token).await.unwrap();
    assert_eq!(app.validate(&refreshed.access_token).await.unwrap().key_id, kid);
    assert_sealed(&stored(&url).await);
    let files = sqlite_files(&url);
    assert!(
        !contains(&files, b"PRIVATE KEY"),
        "the unsealed PEM is left in the SQLite files"
    );
    assert!(
        !contains(&files, &pepper),
        "the unsealed pepper is left in the SQLite files"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_key_encryption_key_stops_auth_svc_at_start_and_changes_nothing() {
    let (mut app, _keys) = app_with_kek().await;
    app.register("alice").await.unwrap();
    let addr = app.stop_auth().await;
    let url = app.auth_settings.database_url.clone();
    let before = stored(&url).await;
    assert_sealed(&before);

    let mut wrong = app.auth_settings.clone();
    wrong.key_encryption_key_file = Some(write_kek(app.dir.path(), "another-kek"));
    let error = refused_start(wrong).await;
    assert!(
        error.contains("the key-encryption key does not open the stored keys"),
        "{error}"
    );
    assert_eq!(stored(&url).await, before, "a refused start changes nothing");

    let mut without = app.auth_settings.clone();
    without.key_encryption_key_file = None;
    let error = refused_start(without).await;
    assert!(
        error.contains("sealed") && error.contains("--key-encryption-key-file"),
        "{error}"
    );
    assert_eq!(stored(&url).await, before, "a refused start changes nothing");

    // The right key still opens everything.
    app.restart_auth(addr).await;
    app.login("alice", PASSWORD).await.unwrap();
}
