//! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert` URL parameters, honoured with rustls.
//!
//! | `sslmode` | encrypted | server certificate checked |
//! | --- | --- | --- |
//! | `disable`, or absent | no | - |
//! | `prefer` | if the server offers TLS | no (as `require`) |
//! | `require` | yes | no; with an `sslrootcert` file, its chain (as `verify-ca`), as libpq does |
//! | `verify-ca` | yes | chains to `sslrootcert` |
//! | `verify-full` | yes | chains to `sslrootcert` and names the host |
//!
//! `sslrootcert` is a PEM file of trust anchors; absent (or `system`, as libpq 16 spells it) means the
//! operating system's roots. Unlike libpq, an absent `sslmode` means no TLS, as before TLS was supported.
//! The host checked by `verify-full` is the URL's host, also when `hostaddr` says where to connect.
//!
//! rustls runs with the `ring` provider, named explicitly here, so a second provider compiled into the
//! binary by another crate cannot make rustls panic over which one to use.

use std::{path::PathBuf, sync::Arc};

use percent_encoding::percent_decode_str;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
    server::ParsedCertificate,
};

use crate::DbError;

/// How much TLS a connection gets (`sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, DbError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` tries plaintext first; tokio-postgres cannot, and nobody should want it.
            other => {
                return Err(DbError::Config(format!(
                    "sslmode: expected disable, prefer, require, verify-ca or verify-full, not {other:?}"
                )));
            }
        })
    }
}

/// Where the trust anchors come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    System,
    File(PathBuf),
}

/// A `postgres://` URL split into what tokio-postgres reads and the TLS parameters read here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsUrl {
    /// The URL without `sslmode` and `sslrootcert` (tokio-postgres refuses `verify-*` and `sslrootcert`).
    pub(crate) rest: String,
    pub(crate) mode: SslMode,
    root_cert: RootCert,
    /// `sslrootcert` was given as a file (which turns `require` into `verify-ca`, as in libpq).
    explicit_root: bool,
}

impl TlsUrl {
    /// Splits `url`; reads no file.
    pub(crate) fn parse(url: &str) -> Result<Self, DbError> {
        // Where tokio-postgres finds the query: after the credentials (up to the first '@', which may
        // contain a '?'), at the first '?'.
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let after_credentials = url[after_scheme..]
            .find('@')
            .map_or(after_scheme, |i| after_scheme + i + 1);
        let Some(query_start) = url[after_credentials..].find('?').map(|i| after_credentials + i) else {
            return Ok(Self {
                rest: url.to_owned(),
                mode: SslMode::Disable,
                root_cert: RootCert::System,
                explicit_root: false,
            });
        };
        let (mut mode, mut root_cert) = (SslMode::Disable, None);
        let mut kept = Vec::new();
        for pair in url[query_start + 1..].split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = || {
                percent_decode_str(value)
                    .decode_utf8()
                    .map(|v| v.into_owned())
                    .map_err(|_| DbError::Config(format!("{key}: not UTF-8 once percent-decoded")))
            };
            // The last of a repeated parameter wins, as in libpq.
            match key {
                "sslmode" => mode = SslMode::parse(&decoded()?)?,
                "sslrootcert" => {
                    root_cert = Some(match decoded()?.as_str() {
                        "" => return Err(DbError::Config("sslrootcert: empty path".into())),
                        "system" => RootCert::System,
                        path => RootCert::File(PathBuf::from(path)),
                    });
                }
                _ => kept.push(pair),
            }
        }
        let mut rest = url[..query_start].to_owned();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        Ok(Self {
            rest,
            mode,
            explicit_root: matches!(root_cert, Some(RootCert::File(_))),
            root_cert: root_cert.unwrap_or(RootCert::System),
        })
    }

    /// Checks everything that can be checked before connecting: the parameters, and that an
    /// `sslrootcert` file holds certificates. (The system roots are read when connecting.)
    pub(crate) fn check(url: &str) -> Result<Self, DbError> {
        let parsed = Self::parse(url)?;
        if let RootCert::File(path) = &parsed.root_cert {
            load_roots_file(path)?;
        }
        Ok(parsed)
    }

    /// The rustls configuration for this mode; `None` for `disable`.
    pub(crate) fn client_config(&self) -> Result<Option<ClientConfig>, DbError> {
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable => return Ok(None),
            SslMode::Prefer | SslMode::Require if !self.explicit_root => Arc::new(EncryptOnly(provider())),
            SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => Arc::new(ChainOnly {
                roots: self.roots()?,
                provider: provider(),
            }),
            SslMode::VerifyFull => rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(self.roots()?),
                Arc::new(provider()),
            )
            .build()
            .map_err(|e| DbError::Config(format!("sslrootcert: {e}")))?,
        };
        let config = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| DbError::Config(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(config))
    }

    fn roots(&self) -> Result<RootCertStore, DbError> {
        match &self.root_cert {
            RootCert::File(path) => load_roots_file(path),
            RootCert::System => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _unusable) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(DbError::Config(format!(
                        "sslrootcert: no usable system root certificates ({} errors reading them); \
                         name the CA with sslrootcert=PATH",
                        found.errors.len()
                    )));
                }
                Ok(roots)
            }
        }
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn load_roots_file(path: &std::path::Path) -> Result<RootCertStore, DbError> {
    let error = |what: String| DbError::Config(format!("sslrootcert {}: {what}", path.display()));
    // Read first: the PEM reader's error for a missing file does not say which.
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| error(format!("not PEM certificates ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| error(format!("not a usable CA certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(error("holds no certificate".into()));
    }
    Ok(roots)
}

/// `prefer` and `require`: encrypted, but any certificate is accepted (libpq's semantics). The handshake
/// signature is still checked, so the session key is the certificate holder's; that is what SCRAM channel
/// binding relies on.
#[derive(Debug)]
struct EncryptOnly(CryptoProvider);

/// `verify-ca`: the certificate must chain to a trust anchor; the name in it is not checked.
#[derive(Debug)]
struct ChainOnly {
    roots: RootCertStore,
    provider: CryptoProvider,
}

fn algorithms(provider: &CryptoProvider) -> &WebPkiSupportedAlgorithms {
    &provider.signature_verification_algorithms
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.0))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.0))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.0).supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            algorithms(&self.provider).all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.provider))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.provider))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.provider).supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_and_the_rest_is_left_to_tokio_postgres() {
        let url = TlsUrl::parse(
            "postgres://u:p?w@db.example:5433/app?options=-csearch_path%3Dauth&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url.rest,
            "postgres://u:p?w@db.example:5433/app?options=-csearch_path%3Dauth&application_name=x"
        );
        assert_eq!(url.mode, SslMode::VerifyFull);
        assert_eq!(url.root_cert, RootCert::File("/etc/ca dir/ca.pem".into()));

        let plain = TlsUrl::parse("postgres://db.example/app").unwrap();
        assert_eq!(
            (plain.rest.as_str(), plain.mode),
            ("postgres://db.example/app", SslMode::Disable)
        );
        let only_tls = TlsUrl::parse("postgres://db/app?sslmode=require&sslmode=verify-ca").unwrap();
        assert_eq!(
            (only_tls.rest.as_str(), only_tls.mode),
            ("postgres://db/app", SslMode::VerifyCa)
        );
        assert_eq!(
            TlsUrl::parse("postgres://db/app?sslmode=verify-full&sslrootcert=system")
                .unwrap()
                .root_cert,
            RootCert::System
        );
    }

    #[test]
    fn a_bad_sslmode_or_sslrootcert_is_refused_naming_the_parameter() {
        for (url, named) in [
            ("postgres://db/app?sslmode=verify", "sslmode"),
            ("postgres://db/app?sslmode=allow", "sslmode"),
            ("postgres://db/app?sslmode=", "sslmode"),
            ("postgres://db/app?sslrootcert=", "sslrootcert"),
            (
                "postgres://db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert /nonexistent/ca.pem",
            ),
        ] {
            let error = TlsUrl::check(url).unwrap_err().to_string();
            assert!(error.contains(named), "{url}: {error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let error = TlsUrl::check(&format!("postgres://db/app?sslrootcert={}", not_pem.display()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sslrootcert") && error.contains("no certificate"),
            "{error}"
        );
    }

    #[test]
    fn each_mode_gets_its_own_verification() {
        let dir = tempfile::tempdir().unwrap();
        let path = watchword_testing::TestCa::new("test CA").write_cert(dir.path(), "ca.pem");
        let root = format!("sslrootcert={}", path.display());
        assert!(
            TlsUrl::check("postgres://db/app")
                .unwrap()
                .client_config()
                .unwrap()
                .is_none(),
            "disable: no TLS"
        );
        for mode in ["prefer", "require", "verify-ca", "verify-full"] {
            let url = TlsUrl::check(&format!("postgres://db/app?sslmode={mode}&{root}")).unwrap();
            assert!(url.client_config().unwrap().is_some(), "{mode}");
        }
    }
}
