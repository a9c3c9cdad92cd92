//! The server side of TLS: rustls configured for gRPC (TLS 1.2 and 1.3, ALPN `h2`, then `http/1.1`), a certificate that
//! reloads, and optionally client certificates checked against a CA (mutual TLS).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};

use super::{
    pem,
    reload::{self, KeyPair, Watched},
};

/// HTTP/2, the only protocol gRPC speaks, named in ALPN.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1, for what is not gRPC on the same port (`/.well-known/*` documents). Offered after `h2`, so a
/// client that speaks both (every gRPC client) gets HTTP/2.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why TLS could not be set up. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{cert} and {key} are no pair: {error}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Config(String),
}

impl TlsError {
    pub(crate) fn file(path: &Path, message: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Trust anchors from a PEM file of CA certificates.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in pem::read_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::file(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// TLS for a server port: the certificate and key (reloaded when their files change, see [`reload`]) and,
/// with a client CA, client certificates verified against it.
///
/// Client certificates are optional even then: end users call without one, and a server decides per call
/// what a certificate is needed for (auth-svc: its internal RPCs). A client that does present one must
/// present one that chains to the CA, or the handshake fails.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    watched: Watched,
    client_ca: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("key_pair", self.watched.pair())
            .field("client_ca", &self.client_ca)
            .finish()
    }
}

impl ServerTls {
    /// Loads the pair (refusing a key file others may access, or a key that is not the certificate's),
    /// starts watching the files (every [`reload::RELOAD_INTERVAL`] and on SIGHUP), and reads the client
    /// CA if given. Must be called within a Tokio runtime; the watching stops when the last clone of this
    /// (and of every acceptor made from it) is gone.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let watched = KeyPair::watch(cert, key, reload::RELOAD_INTERVAL)?;
        let provider = super::provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            Some(path) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(path)?), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(watched.resolver());
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP_1_1.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            watched,
            client_ca: client_ca.is_some(),
        })
    }

    /// Whether client certificates are asked for (and checked against a CA).
    pub fn verifies_clients(&self) -> bool {
        self.client_ca
    }

    /// The key pair in use and its files.
    pub fn key_pair(&self) -> &Arc<KeyPair> {
        self.watched.pair()
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}

/// Checks a `--tls-cert`/`--tls-key` pair as it will be loaded (for start-up checks).
pub fn check_key_pair(cert: &Path, key: &Path) -> Result<(), TlsError> {
    reload::load(cert, key).map(drop)
}

/// Checks a CA file as it will be loaded (for start-up checks).
pub fn check_ca(path: &Path) -> Result<(), TlsError> {
    roots(path).map(drop)
}

/// Checks a certificate file (for a flag's value parser): it must hold at least one PEM certificate.
pub fn check_certificate_file(path: &Path) -> Result<(), TlsError> {
    pem::read_certificates(path).map(drop)
}

/// Checks a private key file (for a flag's value parser): private to its owner, holding one PEM key.
pub fn check_private_key_file(path: &Path) -> Result<(), TlsError> {
    let bytes = pem::read_private(path).map_err(|e| TlsError::file(path, e))?;
    pem::private_key(path, &bytes).map(drop)
}

/// The DNS names a client certificate is valid for, as listed in its subject alternative names (for
/// messages only; decisions use [`valid_for`]).
pub fn certificate_dns_names(cert: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|cert| cert.valid_dns_names().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether the end-entity certificate `cert` is valid for the DNS name `name`, by the same rules a TLS
/// client applies to a server's name (subject alternative names; a wildcard covers one label).
pub fn valid_for(
    cert: &rustls::pki_types::CertificateDer<'_>,
    name: &rustls::pki_types::ServerName<'_>,
) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
}

/// Throwaway certificates: a CA and certificates it issues, for local set-up (`watchword-dev --tls`),
/// tests and benchmarks. Never for production: the keys are generated on the spot and written unprotected
/// except for their file mode.
pub mod dev {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    /// A certificate authority that lives as long as this value.
    pub struct Ca {
        issuer: Issuer<'static, KeyPair>,
        cert_pem: String,
    }

    /// A certificate and its private key, in PEM.
    #[derive(Debug, Clone)]
    pub struct Issued {
        cert_pem: String,
        key_pem: String,
        cert_der: Vec<u8>,
    }

    impl Ca {
        /// A fresh CA named `name`.
        pub fn new(name: &str) -> Result<Self, rcgen::Error> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            Ok(Self {
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            })
        }

        pub fn cert_pem(&self) -> &str {
            &self.cert_pem
        }

        /// A certificate for `names` (DNS names, or IP addresses), usable both to serve and to call other
        /// services as a client, as a service's certificate in a mesh is.
        pub fn issue(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
            let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
            let mut params = CertificateParams::new(names.clone())?;
            if let Some(first) = names.first() {
                params.distinguished_name.push(DnType::CommonName, first.as_str());
            }
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &self.issuer)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                cert_der: cert.der().to_vec(),
            })
        }
    }

    impl Issued {
        pub fn cert_pem(&self) -> &str {
            &self.cert_pem
        }

        pub fn key_pem(&self) -> &str {
            &self.key_pem
        }

        pub fn cert_der(&self) -> Vec<u8> {
            self.cert_der.clone()
        }

        /// Writes the certificate to `cert` and the key to `key`, the key created (or made) 0600 before it
        /// holds anything.
        pub fn write(&self, cert: &Path, key: &Path) -> std::io::Result<()> {
            std::fs::write(cert, &self.cert_pem)?;
            write_private(key, &self.key_pem)
        }
    }

    /// Writes `contents` to `path`, a file only its owner may read or write.
    pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.write_all(contents.as_bytes())
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! [`dev`] with the errors unwrapped, for tests.
    use std::path::Path;

    pub(crate) use super::dev::write_private;

    pub(crate) struct TestCa(super::dev::Ca);
    pub(crate) struct TestCert(super::dev::Issued);

    impl TestCa {
        pub(crate) fn new() -> Self {
            Self(super::dev::Ca::new("watchword test CA").unwrap())
        }

        pub(crate) fn issue(&self, names: &[&str]) -> TestCert {
            TestCert(self.0.issue(names).unwrap())
        }
    }

    impl TestCert {
        pub(crate) fn write(&self, cert: &Path, key: &Path) {
            self.0.write(cert, key).unwrap();
        }

        pub(crate) fn cert_pem(&self) -> &str {
            self.0.cert_pem()
        }

        pub(crate) fn key_pem(&self) -> &str {
            self.0.key_pem()
        }

        pub(crate) fn cert_der(&self) -> Vec<u8> {
            self.0.cert_der()
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, ServerName};

    use super::{testing::TestCa, *};

    #[test]
    fn names_are_matched_like_server_names() {
        let ca = TestCa::new();
        let cert = ca.issue(&["posts-svc.internal", "*.mesh.internal", "127.0.0.1"]);
        let der = CertificateDer::from(cert.cert_der());
        let name = |n: &str| ServerName::try_from(n.to_owned()).unwrap();
        assert!(valid_for(&der, &name("posts-svc.internal")));
        assert!(valid_for(&der, &name("POSTS-SVC.internal")));
        assert!(valid_for(&der, &name("a.mesh.internal")));
        assert!(!valid_for(&der, &name("a.b.mesh.internal")));
        assert!(!valid_for(&der, &name("auth-svc.internal")));
        assert!(!valid_for(
            &CertificateDer::from(vec![1, 2, 3]),
            &name("posts-svc.internal")
        ));
        assert_eq!(
            certificate_dns_names(&der),
            ["posts-svc.internal", "*.mesh.internal"]
        );
    }
}
