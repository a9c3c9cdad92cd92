//! Test support shared by the workspace's test suites (a dev-dependency only, never in a binary):
//! [`PrivatePostgres`], a throwaway PostgreSQL cluster of a test's own, and [`TestCa`], a throwaway
//! certificate authority for TLS tests.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A throwaway PostgreSQL cluster of the test's own, so stopping it disturbs nobody else. Stopped (with
/// its files removed) when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    tls: bool,
}

/// A server certificate for [`PrivatePostgres::create_with_tls`].
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Refuse connections that do not use TLS (`hostssl` only in `pg_hba.conf`).
    pub tls_only: bool,
}

impl PrivatePostgres {
    /// `None` when PostgreSQL's server binaries are not installed (CI installs them: `.ci/postgres`).
    pub fn create() -> Option<Self> {
        Self::create_inner(None)
    }

    /// Like [`PrivatePostgres::create`], with `ssl = on` and `tls`'s certificate.
    pub fn create_with_tls(tls: &ServerTls) -> Option<Self> {
        Self::create_inner(Some(tls))
    }

    fn create_inner(tls: Option<&ServerTls>) -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())?;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            dir,
            bin,
            port,
            tls: tls.is_some(),
        };
        // initdb refuses to run as root; the postgres system user owns the cluster then.
        Command::new("chmod")
            .arg("755")
            .arg(pg.dir.path())
            .status()
            .unwrap();
        pg.give_to_postgres(pg.dir.path());
        pg.run(&format!(
            "{} -D {}/data -A trust -U postgres",
            pg.bin.join("initdb").display(),
            pg.dir.path().display()
        ));
        if let Some(tls) = tls {
            let (cert, key) = (pg.dir.path().join("server.crt"), pg.dir.path().join("server.key"));
            std::fs::write(&cert, &tls.cert_pem).unwrap();
            std::fs::write(&key, &tls.key_pem).unwrap();
            // PostgreSQL refuses a key file that others may read.
            Command::new("chmod").arg("600").arg(&key).status().unwrap();
            pg.give_to_postgres(&cert);
            pg.give_to_postgres(&key);
            if tls.tls_only {
                let hba = pg.dir.path().join("data/pg_hba.conf");
                std::fs::write(&hba, "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
                pg.give_to_postgres(&hba);
            }
        }
        pg.start();
        Some(pg)
    }

    fn give_to_postgres(&self, path: &Path) {
        // Fails harmlessly when not root: then the files are ours, and so is the cluster.
        let _ = Command::new("chown")
            .arg("postgres")
            .arg(path)
            .stderr(Stdio::null())
            .status();
    }

    fn run(&self, command: &str) {
        let as_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        let status = if as_root {
            Command::new("su")
                .args(["postgres", "-c", command])
                .stdout(Stdio::null())
                .status()
        } else {
            Command::new("sh")
                .args(["-c", command])
                .stdout(Stdio::null())
                .status()
        };
        assert!(status.unwrap().success(), "{command}");
    }

    fn pg_ctl(&self, action: &str) {
        let dir = self.dir.path().display();
        let tls = if self.tls {
            format!(" -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key")
        } else {
            String::new()
        };
        self.run(&format!(
            "{} -D {dir}/data -o '-p {} -k {dir} -c listen_addresses=127.0.0.1{tls}' -l {dir}/log {action} -w",
            self.bin.join("pg_ctl").display(),
            self.port
        ));
    }

    pub fn start(&self) {
        self.pg_ctl("start");
    }

    /// An abrupt stop, as in a crash: no goodbye to clients.
    pub fn kill(&self) {
        self.pg_ctl("stop -m immediate");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `postgres` as user `postgres` (trusted: no password), with `search_path`
    /// set to `schema`.
    pub fn url(&self, schema: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?options=-csearch_path%3D{schema}",
            self.port
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let dir = self.dir.path().display();
        let stop = format!(
            "{} -D {dir}/data stop -m immediate",
            self.bin.join("pg_ctl").display()
        );
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
        let mut command = if as_root {
            let mut su = Command::new("su");
            su.args(["postgres", "-c", &stop]);
            su
        } else {
            let mut sh = Command::new("sh");
            sh.args(["-c", &stop]);
            sh
        };
        let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names, or IP addresses) signed by this CA: (certificate,
    /// private key), PEM.
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate to `dir/file` and returns its path.
    pub fn write_cert(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.cert_pem()).unwrap();
        path
    }
}
