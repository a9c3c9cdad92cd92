//! The application: storage, keys, the revocation hub and the use cases, built from [`Settings`], and the
//! background work that keeps them current.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::{
    accounts::{AccountRules, Accounts},
    admin::Admin,
    apikeys::{ApiKeyRules, ApiKeys},
    error::AuthError,
    keys::{KeyConfig, KeyRing},
    metrics::AuthMetrics,
    opaque::OpaqueTokens,
    password::PasswordHasher,
    revocations::{self, HubConfig, RevocationHub},
    sealing::{self, KeyEncryptionKey, Row},
    sessions::{SessionRules, Sessions},
    settings::Settings,
    store::Store,
    throttle::TrustedProxies,
};

/// The secret that keys refresh-token hashes (`opaque.rs`).
const PEPPER: &str = "refresh_token_pepper";

/// How often expired records are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

pub struct App {
    pub accounts: Accounts,
    pub sessions: Sessions,
    pub api_keys: ApiKeys,
    pub admin: Admin,
    pub keys: Arc<KeyRing>,
    pub hub: Arc<RevocationHub>,
    pub store: Store,
    /// The newest revocation log row when the hub's snapshot was loaded: the relay reads from after it.
    relay_from: i64,
    pub metrics: AuthMetrics,
    /// Who may name the client in `x-forwarded-for` (`--trusted-proxies`), for every call's
    /// [`Origin`](crate::audit::Origin).
    pub proxies: TrustedProxies,
    /// How long audit events are kept (`--audit-retention`).
    audit_retention: Duration,
}

impl App {
    /// Opens storage and builds everything on it.
    ///
    /// `remember_live`: whether Validate may remember live sessions, i.e. whether this process has claimed
    /// the database and so sees every revocation as it is stored. `metrics`: where the use cases count.
    pub async fn build(
        settings: &Settings,
        remember_live: bool,
        metrics: &watchword::metrics::Metrics,
    ) -> Result<Self, AuthError> {
        let pool = settings.pool_options();
        let auth_metrics = AuthMetrics::new(metrics);
        let (store, hasher) = tokio::join!(Store::open(&settings.database_url, &pool), PasswordHasher::new());
        let (store, hasher) = (store?, hasher?.with_metrics(auth_metrics.clone()));
        let kek = key_encryption_key(settings)?;
        let rewritten = store.keys_at_rest(kek.clone()).await??;
        if let Some(kek) = kek.as_deref().filter(|_| rewritten > 0) {
            // Sealing overwrote unsealed keys in place: leave no copy of them in the file's free pages.
            store.vacuum().await?;
            tracing::info!(rows = rewritten, kek = kek.id(), "sealed the stored keys");
        }
        let keys = Arc::new(KeyRing::open(store.clone(), key_config(settings, kek.clone())).await?);
        tracing::info!(kid = keys.signing_kid(), "signing key loaded");
        let hub = Arc::new(RevocationHub::new(HubConfig {
            max_subscribers: usize::try_from(settings.max_revocation_subscribers).unwrap_or(usize::MAX),
            remember_live,
            window: keys.revocation_window(),
        }));
        // The log position first, then the snapshot: a revocation committed in between is in one or both
        // (a repeat is harmless), never in neither.
        let relay_from = store.last_revocation_id().await?;
        hub.load(&store).await?;
        let mut candidate = [0u8; 32];
        getrandom::fill(&mut candidate).map_err(|e| AuthError::Internal(format!("randomness: {e}")))?;
        let row = Row::Secret(PEPPER);
        let stored = store
            .secret_or_insert(PEPPER, sealing::seal_if(kek.as_deref(), row, &candidate)?)
            .await?;
        let pepper: [u8; 32] = sealing::unseal(kek.as_deref(), row, &stored)?
            .try_into()
            .map_err(|_| AuthError::Internal("stored refresh_token_pepper is not 32 bytes".into()))?;
        let opaque = OpaqueTokens::new(pepper);
        let sessions = Sessions::new(
            store.clone(),
            Arc::clone(&keys),
            Arc::clone(&hub),
            opaque.clone(),
            SessionRules {
                refresh_token_ttl: settings.refresh_token_ttl,
                refresh_reuse_grace: settings.refresh_reuse_grace,
            },
            auth_metrics.clone(),
        );
        Ok(Self {
            accounts: Accounts::new(
                store.clone(),
                hasher,
                Arc::clone(&keys),
                Arc::clone(&hub),
                opaque.clone(),
                account_rules(settings),
                auth_metrics.clone(),
            ),
            api_keys: ApiKeys::new(
                store.clone(),
                Arc::clone(&keys),
                sessions.clone(),
                opaque,
                ApiKeyRules {
                    max_ttl: settings.api_key_max_ttl,
                },
            ),
            sessions,
            admin: Admin::new(store.clone(), Arc::clone(&hub), auth_metrics.clone()),
            keys,
            hub,
            store,
            relay_from,
            metrics: auth_metrics,
            proxies: TrustedProxies::new(settings.trusted_proxies.clone()),
            audit_retention: settings.audit_retention,
        })
    }

    /// Starts the background work: key reloads, purging, and (with a shared database) the revocation
    /// relay. The tasks run until the returned handle is dropped.
    pub fn start_background(&self) -> Background {
        let mut tasks = vec![
            tokio::spawn(Arc::clone(&self.keys).keep_reloading()),
            tokio::spawn(purge(
                self.store.clone(),
                self.keys.revocation_window(),
                self.audit_retention,
            )),
        ];
        if self.store.is_shared() {
            // Relay what others store from the snapshot on.
            let last_id = self.relay_from;
            let keys = Arc::clone(&self.keys);
            tasks.push(tokio::spawn(revocations::relay(
                self.store.clone(),
                Arc::clone(&self.hub),
                last_id,
                move || {
                    let keys = Arc::clone(&keys);
                    async move {
                        if let Err(error) = keys.reload().await {
                            tracing::warn!(%error, "reloading keys after a key revocation failed");
                        }
                    }
                },
            )));
        }
        Background(tasks)
    }
}

/// The background tasks of an [`App`]; aborted when dropped.
pub struct Background(Vec<JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Drops what can no longer matter, every [`PURGE_EVERY`]: expired refresh and device tokens, idle lockout
/// records, old revocation log rows, audit events past `--audit-retention`, and keys whose tokens have all
/// expired.
async fn purge(store: Store, window: Duration, audit_retention: Duration) {
    let mut interval = tokio::time::interval(PURGE_EVERY);
    loop {
        interval.tick().await;
        let now = std::time::SystemTime::now();
        match tokio::try_join!(
            store.purge_expired(now, window, audit_retention),
            store.drop_retired_keys(now - window)
        ) {
            Ok((0, 0)) => {}
            Ok((records, keys)) => tracing::info!(records, keys, "purged expired records and retired keys"),
            Err(error) => tracing::warn!(%error, "purging expired records failed"),
        }
    }
}

fn key_config(settings: &Settings, kek: Option<Arc<KeyEncryptionKey>>) -> KeyConfig {
    KeyConfig {
        issuer: settings.issuer.clone(),
        audience: settings.audience.clone(),
        access_token_ttl: settings.access_token_ttl,
        signing_key_file: settings.signing_key_file.clone(),
        kek,
        publish_lead: settings.key_publish_lead,
    }
}

/// The key-encryption key from `--key-encryption-key-file`; without one, a warning: the one-command local
/// set-up runs without, but a deployment should not.
fn key_encryption_key(settings: &Settings) -> Result<Option<Arc<KeyEncryptionKey>>, AuthError> {
    let Some(path) = &settings.key_encryption_key_file else {
        tracing::warn!(
            "no --key-encryption-key-file: the private signing keys and the refresh-token pepper are stored \
             unsealed, so a copy of the database can mint tokens"
        );
        return Ok(None);
    };
    let kek = crate::settings::read_key_encryption_key_file(path)
        .map_err(|e| AuthError::Internal(format!("--key-encryption-key-file: {e}")))?;
    Ok(Some(Arc::new(kek)))
}

fn account_rules(settings: &Settings) -> AccountRules {
    AccountRules {
        min_password_length: usize::from(settings.min_password_length),
        lockout_threshold: settings.lockout_threshold,
        refresh_token_ttl: settings.refresh_token_ttl,
        peer_rate: settings.peer_rate,
        peer_burst: settings.peer_burst,
        trusted_proxies: TrustedProxies::new(settings.trusted_proxies.clone()),
        default_role: settings.default_role.level(),
    }
}
