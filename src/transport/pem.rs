//! Reading certificates and keys from PEM files, refusing key files that others may read.

use std::{io::Read as _, path::Path};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::TlsError;

/// Opens `path` for reading if it is a regular file private to its owner (no group or other permission
/// bits): whoever can read a private key can impersonate the service, and whoever can write it can swap in
/// their own. The mode is checked on the opened file, so what is read is what was checked.
pub fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    // Before opening: opening a FIFO would block.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let file = std::fs::File::open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{path} is accessible to group or others (mode {mode:04o}); a private key must be \
                     private to its owner: run `chmod 600 {path}`",
                    path = path.display()
                ),
            ));
        }
    }
    Ok(file)
}

/// The bytes of `path`, read through [`open_private`].
pub fn read_private(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_private(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Every certificate in a PEM file's bytes, in order (the end-entity certificate first, for a chain).
pub(crate) fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "no CERTIFICATE in it"));
    }
    Ok(certs)
}

/// The one private key (PKCS#8, PKCS#1 or SEC1) in a PEM file's bytes.
pub(crate) fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::file(path, e))
}

/// Reads certificates from `path` (a certificate file is public: any mode will do).
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::file(path, e))?;
    certificates(path, &pem)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_key_file_is_read_only_while_it_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "pem").unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = read_private(&path).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_private(&path).unwrap(), b"pem");
        }
        assert!(read_private(dir.path()).is_err(), "a directory is no key file");
    }

    #[test]
    fn files_without_what_they_should_hold_are_refused_by_name() {
        let path = Path::new("x.pem");
        let error = certificates(path, b"hello").unwrap_err().to_string();
        assert!(
            error.contains("x.pem") && error.contains("no CERTIFICATE"),
            "{error}"
        );
        assert!(
            private_key(
                path,
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
    }
}
