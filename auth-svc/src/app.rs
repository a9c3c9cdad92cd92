//! The application: storage, keys, the revocation hub and the use cases, built from [`Settings`], and the
//! background work that keeps them current.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::{
    accounts::{AccountRules, Accounts},
    admin::Admin,
    error::AuthError,
    keys::{KeyConfig, KeyRing},
    metrics::AuthMetrics,
    opaque::OpaqueTokens,
    password::PasswordHasher,
    revocations::{self, HubConfig, RevocationHub},
    sessions::{SessionRules, Sessions},
    settings::Settings,
    store::Store,
    throttle::TrustedProxies,
};

/// How often expired records are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

pub struct App {
    pub accounts: Accounts,
    pub sessions: Sessions,
    pub admin: Admin,
    pub keys: Arc<KeyRing>,
    pub hub: Arc<RevocationHub>,
    pub store: Store,
    pub metrics: AuthMetrics,
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
        let keys = Arc::new(KeyRing::open(store.clone(), key_config(settings)).await?);
        tracing::info!(kid = keys.signing_kid(), "signing key loaded");
        let hub = Arc::new(RevocationHub::new(HubConfig {
            max_subscribers: usize::try_from(settings.max_revocation_subscribers).unwrap_or(usize::MAX),
            remember_live,
            window: keys.revocation_window(),
        }));
        hub.load(&store).await?;
        let mut candidate = [0u8; 32];
        getrandom::fill(&mut candidate).map_err(|e| AuthError::Internal(format!("randomness: {e}")))?;
        let pepper = store
            .secret_or_insert("refresh_token_pepper", candidate.to_vec())
            .await?;
        let pepper: [u8; 32] = pepper
            .try_into()
            .map_err(|_| AuthError::Internal("stored refresh_token_pepper is not 32 bytes".into()))?;
        let opaque = OpaqueTokens::new(pepper);
        Ok(Self {
            accounts: Accounts::new(
                store.clone(),
                hasher,
                Arc::clone(&keys),
                opaque.clone(),
                account_rules(settings),
                auth_metrics.clone(),
            ),
            sessions: Sessions::new(
                store.clone(),
                Arc::clone(&keys),
                Arc::clone(&hub),
                opaque,
                SessionRules {
                    refresh_token_ttl: settings.refresh_token_ttl,
                    refresh_reuse_grace: settings.refresh_reuse_grace,
                },
                auth_metrics.clone(),
            ),
            admin: Admin::new(store.clone(), Arc::clone(&hub), auth_metrics.clone()),
            keys,
            hub,
            store,
            metrics: auth_metrics,
        })
    }

    /// Starts the background work: key reloads, purging, and (with a shared database) the revocation
    /// relay. The tasks run until the returned handle is dropped.
    pub async fn start_background(&self) -> Result<Background, AuthError> {
        let mut tasks = vec![
            tokio::spawn(Arc::clone(&self.keys).keep_reloading()),
            tokio::spawn(purge(self.store.clone(), self.keys.revocation_window())),
        ];
        if self.store.is_shared() {
            // Relay what others store from now on; what was stored before is in the hub's snapshot already.
            let last_id = self.store.last_revocation_id().await?;
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
        Ok(Background(tasks))
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
/// records, old revocation log rows, and keys whose tokens have all expired.
async fn purge(store: Store, window: Duration) {
    let mut interval = tokio::time::interval(PURGE_EVERY);
    loop {
        interval.tick().await;
        let now = std::time::SystemTime::now();
        match tokio::try_join!(
            store.purge_expired(now, window),
            store.drop_retired_keys(now - window)
        ) {
            Ok((0, 0)) => {}
            Ok((records, keys)) => tracing::info!(records, keys, "purged expired records and retired keys"),
            Err(error) => tracing::warn!(%error, "purging expired records failed"),
        }
    }
}

fn key_config(settings: &Settings) -> KeyConfig {
    KeyConfig {
        issuer: settings.issuer.clone(),
        audience: settings.audience.clone(),
        access_token_ttl: settings.access_token_ttl,
        signing_key_file: settings.signing_key_file.clone(),
    }
}

fn account_rules(settings: &Settings) -> AccountRules {
    AccountRules {
        min_password_length: usize::from(settings.min_password_length),
        lockout_threshold: settings.lockout_threshold,
        refresh_token_ttl: settings.refresh_token_ttl,
        peer_rate: settings.peer_rate,
        peer_burst: settings.peer_burst,
        trusted_proxies: TrustedProxies::new(settings.trusted_proxies.clone()),
    }
}
