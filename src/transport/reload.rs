//! A certificate and private key read from two PEM files and read again when they change, so certificates
//! rotate without a restart.
//!
//! The files are read every [`RELOAD_INTERVAL`] and on SIGHUP, off the async workers. A changed pair is
//! checked (both parse, the key matches the certificate) before it replaces the one in use; a bad pair is
//! logged once and the old one kept. rustls asks [`KeyPair`] for the pair at every handshake (it is both a
//! server and a client certificate resolver), so new handshakes get the new certificate while open
//! connections, whose handshakes are done, carry on.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use rustls::{
    SignatureScheme,
    client::ResolvesClientCert,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::{TlsError, pem};

/// How often the files are read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A certificate chain and its private key, from files that may be replaced at any time.
pub struct KeyPair {
    cert_path: PathBuf,
    key_path: PathBuf,
    in_use: RwLock<Arc<CertifiedKey>>,
    /// The file contents last looked at (loaded or refused), so an unchanged file is not parsed again
    /// and a bad pair is reported once.
    last_seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// The pair in two files, checked: both parse, the key is private to its owner and matches the
/// certificate.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert_path).map_err(|e| TlsError::file(cert_path, e))?;
    let key_pem = pem::read_private(key_path).map_err(|e| TlsError::file(key_path, e))?;
    parse(cert_path, &cert_pem, key_path, &key_pem)
}

fn parse(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let certs = pem::certificates(cert_path, cert_pem)?;
    let key = pem::private_key(key_path, key_pem)?;
    CertifiedKey::from_der(certs, key, &super::provider()).map_err(|error| TlsError::Pair {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        error,
    })
}

impl KeyPair {
    /// Loads the pair now (an error if it is unusable) and starts watching the files: every `interval`
    /// and on SIGHUP, until the returned [`Watched`] is dropped. Must be called within a Tokio runtime.
    pub fn watch(cert_path: &Path, key_path: &Path, interval: Duration) -> Result<Watched, TlsError> {
        let cert_pem = std::fs::read(cert_path).map_err(|e| TlsError::file(cert_path, e))?;
        let key_pem = pem::read_private(key_path).map_err(|e| TlsError::file(key_path, e))?;
        let pair = Arc::new(Self {
            in_use: RwLock::new(Arc::new(parse(cert_path, &cert_pem, key_path, &key_pem)?)),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            last_seen: Mutex::new((cert_pem, key_pem)),
        });
        // Registered now, not when the task first runs: from here on SIGHUP means "reload", never the
        // default "terminate".
        #[cfg(unix)]
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        #[cfg(not(unix))]
        let hangup = None;
        let task = tokio::spawn(watch(Arc::downgrade(&pair), interval, hangup));
        Ok(Watched {
            pair,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }

    /// The pair handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.in_use.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the files and, if they changed, puts the new pair in use. `Ok(true)` if it did, `Ok(false)`
    /// if nothing changed since the last look; an error (and the old pair kept) if the new pair is bad.
    /// Blocking: file I/O.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let cert_pem = std::fs::read(&self.cert_path).map_err(|e| TlsError::file(&self.cert_path, e))?;
        let key_pem = pem::read_private(&self.key_path).map_err(|e| TlsError::file(&self.key_path, e))?;
        {
            let mut last_seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            if last_seen.0 == cert_pem && last_seen.1 == key_pem {
                return Ok(false);
            }
            *last_seen = (cert_pem.clone(), key_pem.clone());
        }
        let pair = parse(&self.cert_path, &cert_pem, &self.key_path, &key_pem)?;
        *self.in_use.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(true)
    }
}

/// Reloads `pair` every `interval` and on each SIGHUP, until the pair is gone.
async fn watch(pair: Weak<KeyPair>, interval: Duration, mut hangup: Option<Hangup>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = next_hangup(&mut hangup) => tracing::info!("SIGHUP: reading the certificate files again"),
        }
        let Some(pair) = pair.upgrade() else { return };
        let checked = Arc::clone(&pair);
        match tokio::task::spawn_blocking(move || checked.reload()).await {
            Ok(Ok(true)) => tracing::info!(cert = %pair.cert_path.display(), "certificate reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "new certificate files refused; still using the previous pair");
            }
            Err(error) => tracing::warn!(%error, "certificate reload failed"),
        }
    }
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = std::convert::Infallible;

/// The next SIGHUP; never, where there is none.
async fn next_hangup(hangup: &mut Option<Hangup>) {
    #[cfg(unix)]
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    #[cfg(not(unix))]
    let _ = hangup;
    std::future::pending().await
}

/// A [`KeyPair`] being watched; the watching stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Watched {
    pair: Arc<KeyPair>,
    _task: Arc<AbortOnDrop>,
}

impl Watched {
    pub fn pair(&self) -> &Arc<KeyPair> {
        &self.pair
    }

    /// A resolver for rustls configurations, keeping the watching alive as long as rustls holds it.
    pub(crate) fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver(self.clone()))
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands every handshake, server or client side, the pair currently in use.
#[derive(Debug)]
pub(crate) struct Resolver(Watched);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.pair.current())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.pair.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::transport::tls::testing::{TestCa, write_private};

    fn end_entity(pair: &KeyPair) -> Vec<u8> {
        pair.current().cert[0].to_vec()
    }

    #[tokio::test]
    async fn changed_files_are_taken_up_and_a_bad_pair_keeps_the_old_one() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
        let first = ca.issue(&["first.test"]);
        first.write(&cert, &key);
        // A long interval: this test drives reload() itself.
        let watched = KeyPair::watch(&cert, &key, Duration::from_secs(3600)).unwrap();
        let pair = watched.pair();
        assert_eq!(end_entity(pair), first.cert_der());
        assert!(!pair.reload().unwrap(), "nothing changed");

        let second = ca.issue(&["second.test"]);
        second.write(&cert, &key);
        assert!(pair.reload().unwrap());
        assert_eq!(end_entity(pair), second.cert_der());

        // A certificate whose key is not the one beside it (half a rotation): refused, old pair kept.
        let third = ca.issue(&["third.test"]);
        std::fs::write(&cert, third.cert_pem()).unwrap();
        let error = pair.reload().unwrap_err().to_string();
        assert!(error.contains("tls.pem") && error.contains("tls.key"), "{error}");
        assert_eq!(end_entity(pair), second.cert_der());
        assert!(!pair.reload().unwrap(), "a refused pair is reported once");

        // The rest of the rotation arrives: taken up.
        write_private(&key, third.key_pem()).unwrap();
        assert!(pair.reload().unwrap());
        assert_eq!(end_entity(pair), third.cert_der());

        // Garbage, and a key file others may read: refused, old pair kept.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(pair.reload().is_err());
        first.write(&cert, &key);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(pair.reload().unwrap_err().to_string().contains("chmod 600"));
        assert_eq!(end_entity(pair), third.cert_der());
    }

    #[tokio::test]
    async fn the_watch_task_reloads_by_itself_and_stops_with_its_pair() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
        ca.issue(&["first.test"]).write(&cert, &key);
        let watched = KeyPair::watch(&cert, &key, Duration::from_millis(20)).unwrap();
        let second = ca.issue(&["second.test"]);
        second.write(&cert, &key);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while end_entity(watched.pair()) != second.cert_der() {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded within 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let task = watched._task.0.clone();
        drop(watched);
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !task.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "watcher outlived its pair"
            );
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused_at_load() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
        ca.issue(&["a.test"]).write(&cert, &key);
        std::fs::write(&cert, ca.issue(&["b.test"]).cert_pem()).unwrap();
        assert!(matches!(load(&cert, &key), Err(TlsError::Pair { .. })));
    }
}
