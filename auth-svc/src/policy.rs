//! The decisions auth-svc's storage rules make, as plain functions of what a rule has loaded: when failed
//! logins lock, what presenting a refresh token leads to, and who is the last admin. The store loads and
//! applies in one transaction; these decide, and are tested without a database.

use std::time::{Duration, SystemTime};

use watchword::{reason::Reason, roles::Level};

use crate::domain::{Revocation, Target, User};

/// The first lock lasts this long; each further failure doubles it, up to [`LOCK_CAP`].
pub const LOCK_BASE: Duration = Duration::from_secs(30);
pub const LOCK_CAP: Duration = Duration::from_secs(15 * 60);
/// A presented refresh token with what rotation decides on.
#[derive(Debug)]
pub struct Presented {
    pub session_id: String,
    pub expire_time: SystemTime,
    pub rotate_time: Option<SystemTime>,
    pub session_revoked: bool,
    pub user: User,
}

/// Failed logins in a row, and the lock they led to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: i64,
    pub locked_until: Option<SystemTime>,
}

/// The outcome of presenting a refresh token.
#[derive(Debug)]
pub enum Rotation {
    /// Rotated now, or repeated within the grace window: issue tokens for `user` in `session_id`.
    Rotated {
        user: User,
        session_id: String,
        expire_time: SystemTime,
    },
    Unknown,
    Expired,
    Revoked,
    UserDisabled,
    /// An already-rotated token came back after the grace window: the session has just been revoked.
    Reused(Revocation),
}

/// Whose failure budget a login attempt draws on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The account's: strangers' failures count here, and lock every login without a device token.
    Account,
    /// A device token's own (the hash), presented by a device the account holder logged in from before.
    Device(Vec<u8>),
}

/// Why an admin change to a user was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminRefusal {
    NotFound,
    /// It would leave no enabled admin.
    LastAdmin,
}

/// Why a change a signed-in user asked for was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum CallerRefusal {
    /// There is no such thing, or it is not the caller's and the caller is no admin (the two look alike, so
    /// nobody learns what others have).
    NotFound,
    /// The caller's own session ended meanwhile.
    Revoked,
    /// The caller's account was disabled meanwhile.
    UserDisabled,
    /// Logout of an API key's session: that would revoke the key, which only RevokeApiKey does.
    ApiKeySession,
}

/// Whether `caller` (as stored now, `None` if gone) may manage what `owner_id` owns (a session, an API
/// key): its owner may, and so may an enabled admin. A disabled account may manage nothing.
pub fn may_manage(caller: Option<&User>, owner_id: &str) -> bool {
    caller.is_some_and(|caller| !caller.disabled && (caller.id == owner_id || caller.is_admin()))
}

/// An API key's lifetime when none is asked for: a year, or `--api-key-max-ttl` if that is shorter.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why an API key was not created.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The caller's account was disabled (or is gone).
    UserDisabled,
    /// The caller may not give a key this role (see [`may_grant`]).
    RoleNotHeld(String),
}

/// Whether a holder of `roles` may give an API key `role`: one it holds, or a lower level than one it
/// holds (a user may make a read-only guest key). Never more than the holder has.
pub fn may_grant(roles: &[String], role: &str) -> bool {
    let below = match (Level::of(roles), Level::parse(role)) {
        (Some(held), Some(wanted)) => wanted <= held,
        _ => false,
    };
    below || roles.iter().any(|r| r == role)
}

/// The roles a new API key gets: `requested` (known roles, sorted), each one the holder may grant; none
/// requested means the holder's own roles.
pub fn key_roles(holder: &[String], requested: Vec<String>) -> Result<Vec<String>, KeyRefusal> {
    if requested.is_empty() {
        return Ok(holder.to_vec());
    }
    match requested.iter().find(|role| !may_grant(holder, role)) {
        Some(role) => Err(KeyRefusal::RoleNotHeld(role.clone())),
        None => Ok(requested),
    }
}

/// The API keys (id, roles) a change of their owner's roles to `roles` must end: those carrying a role
/// the owner may no longer grant, so no key is worth more than its owner.
pub fn keys_to_end(keys: &[(String, Vec<String>)], roles: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|(_, key_roles)| key_roles.iter().any(|role| !may_grant(roles, role)))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Why an asked-for API key lifetime is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyTtlRefusal {
    NotPositive,
    AboveMax(Duration),
}

/// An API key's lifetime: `requested`, which must be positive and at most `max`; without one, a year (or
/// `max` if that is shorter).
pub fn key_ttl(requested: Option<Duration>, max: Duration) -> Result<Duration, KeyTtlRefusal> {
    match requested {
        None => Ok(DEFAULT_KEY_TTL.min(max)),
        Some(ttl) if ttl.is_zero() => Err(KeyTtlRefusal::NotPositive),
        Some(ttl) if ttl > max => Err(KeyTtlRefusal::AboveMax(max)),
        Some(ttl) => Ok(ttl),
    }
}

/// A presented API key with what an exchange decides on.
#[derive(Debug, Clone)]
pub struct PresentedKey {
    pub key_id: String,
    pub roles: Vec<String>,
    pub expire_time: SystemTime,
    pub revoked: bool,
    pub user: User,
}

/// What presenting an API key leads to.
#[derive(Debug)]
pub enum Exchange {
    /// Issue a token for `user` (its roles: the key's) in the key's session.
    Issue {
        user: User,
        key_id: String,
    },
    Unknown,
    Expired,
    Revoked,
    UserDisabled,
}

/// What presenting an API key (`None`: one we do not know) leads to. Disabled first, as for refresh
/// tokens: disabling also revokes the key, and "disabled" is the more useful answer. The token carries the
/// key's roles, less any its owner could not grant now (never reached while role changes end such keys).
pub fn exchange(found: Option<PresentedKey>, now: SystemTime) -> Exchange {
    let Some(key) = found else {
        return Exchange::Unknown;
    };
    if key.user.disabled {
        return Exchange::UserDisabled;
    }
    if key.revoked {
        return Exchange::Revoked;
    }
    if key.expire_time <= now {
        return Exchange::Expired;
    }
    let roles = key
        .roles
        .into_iter()
        .filter(|role| may_grant(&key.user.roles, role))
        .collect();
    Exchange::Issue {
        user: User { roles, ..key.user },
        key_id: key.key_id,
    }
}

/// Whether `user_id` is the only enabled admin, so taking admin away from it would leave none.
pub fn is_last_admin(enabled_admins: &[String], user_id: &str) -> bool {
    enabled_admins.iter().all(|admin| admin == user_id) && enabled_admins.iter().any(|a| a == user_id)
}

/// Counts one more attempt against `failures`, or says how long they are locked. Reaching `threshold`
/// failures locks for 30 s, doubling with each further failure, up to 15 min.
pub fn reserve(failures: Failures, threshold: u32, now: SystemTime) -> Result<Failures, Duration> {
    let wait = failures
        .locked_until
        .and_then(|until| until.duration_since(now).ok());
    if let Some(wait) = wait.filter(|wait| !wait.is_zero()) {
        return Err(wait);
    }
    let count = failures.count.saturating_add(1);
    let locked_until = u32::try_from(count)
        .ok()
        .and_then(|count| count.checked_sub(threshold))
        .map(|over| {
            now + LOCK_BASE
                .saturating_mul(2u32.saturating_pow(over.min(20)))
                .min(LOCK_CAP)
        });
    Ok(Failures { count, locked_until })
}

/// What presenting a refresh token leads to. `successor`: the rotate and expire times of the token this
/// one was rotated to, when it was. Disabled first: disabling also revokes sessions, and "disabled" is the
/// more useful answer. A failed login never matters here: whoever holds a live session keeps it.
pub fn rotation(
    presented: &Presented,
    successor: Option<(Option<SystemTime>, SystemTime)>,
    now: SystemTime,
    grace: Duration,
    ttl: Duration,
) -> Rotation {
    if presented.user.disabled {
        return Rotation::UserDisabled;
    }
    if presented.session_revoked {
        return Rotation::Revoked;
    }
    if presented.expire_time <= now {
        return Rotation::Expired;
    }
    let rotated = |expire_time| Rotation::Rotated {
        user: presented.user.clone(),
        session_id: presented.session_id.clone(),
        expire_time,
    };
    let Some(rotated_at) = presented.rotate_time else {
        return rotated(now + ttl);
    };
    let repeat = now.duration_since(rotated_at).unwrap_or_default() <= grace;
    match successor {
        // A repeat within the grace window, and the successor has not itself been used yet.
        Some((None, successor_expires)) if repeat => rotated(successor_expires),
        _ => Rotation::Reused(Revocation::new(
            Target::Session(presented.session_id.clone()),
            now,
            Reason::TokenRevoked,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    #[test]
    fn attempts_lock_at_the_threshold_and_double_up_to_the_cap() {
        let mut failures = Failures::default();
        for _ in 0..4 {
            failures = reserve(failures, 5, at(0)).unwrap();
            assert_eq!(failures.locked_until, None);
        }
        failures = reserve(failures, 5, at(0)).unwrap();
        assert_eq!(failures.locked_until, Some(at(30)));
        assert_eq!(reserve(failures, 5, at(10)), Err(Duration::from_secs(20)));
        failures = reserve(failures, 5, at(30)).unwrap();
        assert_eq!(failures.locked_until, Some(at(90)));
        let capped = reserve(
            Failures {
                count: 40,
                locked_until: None,
            },
            5,
            at(0),
        )
        .unwrap();
        assert_eq!(capped.locked_until, Some(at(0) + LOCK_CAP));
    }

    #[test]
    fn the_last_enabled_admin_is_recognised() {
        let admins = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_last_admin(&admins(&["a"]), "a"));
        assert!(!is_last_admin(&admins(&["a", "b"]), "a"));
        assert!(
            !is_last_admin(&admins(&["a"]), "b"),
            "not an admin: nothing to lose"
        );
        assert!(!is_last_admin(&admins(&[]), "a"));
    }

    fn user(id: &str, roles: &[&str], disabled: bool) -> User {
        User {
            id: id.into(),
            username: id.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            create_time: at(0),
            disabled,
        }
    }

    #[test]
    fn owners_and_enabled_admins_manage_what_a_user_owns() {
        assert!(may_manage(Some(&user("a", &["user"], false)), "a"));
        assert!(may_manage(Some(&user("a", &["guest"], false)), "a"));
        assert!(!may_manage(Some(&user("a", &["user"], false)), "b"));
        assert!(may_manage(Some(&user("r", &["admin"], false)), "b"));
        assert!(!may_manage(Some(&user("r", &["admin"], true)), "b"));
        assert!(!may_manage(Some(&user("a", &["user"], true)), "a"));
        assert!(!may_manage(None, "a"));
    }

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|r| (*r).to_owned()).collect()
    }

    #[test]
    fn a_key_gets_roles_its_owner_holds_or_lower_levels_and_never_more() {
        let user = roles(&["user"]);
        assert_eq!(
            key_roles(&user, vec![]),
            Ok(user.clone()),
            "none asked: the owner's"
        );
        assert_eq!(key_roles(&user, roles(&["guest"])), Ok(roles(&["guest"])));
        assert_eq!(key_roles(&user, roles(&["user"])), Ok(user.clone()));
        assert_eq!(
            key_roles(&user, roles(&["admin", "user"])),
            Err(KeyRefusal::RoleNotHeld("admin".into()))
        );
        assert_eq!(
            key_roles(&roles(&["guest"]), roles(&["user"])),
            Err(KeyRefusal::RoleNotHeld("user".into()))
        );
        assert!(may_grant(&roles(&["admin"]), "user"));
        assert!(!may_grant(&[], "guest"));
    }

    #[test]
    fn a_role_change_ends_the_keys_it_leaves_worth_more_than_their_owner() {
        let keys = vec![
            ("k-admin".to_owned(), roles(&["admin"])),
            ("k-user".to_owned(), roles(&["user"])),
            ("k-guest".to_owned(), roles(&["guest"])),
        ];
        assert_eq!(
            keys_to_end(&keys, &roles(&["admin", "user"])),
            Vec::<String>::new()
        );
        assert_eq!(keys_to_end(&keys, &roles(&["user"])), ["k-admin"]);
        assert_eq!(keys_to_end(&keys, &roles(&["guest"])), ["k-admin", "k-user"]);
        assert_eq!(keys_to_end(&keys, &[]), ["k-admin", "k-user", "k-guest"]);
    }

    #[test]
    fn key_lifetimes_default_to_a_year_within_the_maximum() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(key_ttl(None, 3650 * day), Ok(DEFAULT_KEY_TTL));
        assert_eq!(key_ttl(None, 30 * day), Ok(30 * day));
        assert_eq!(key_ttl(Some(day), 30 * day), Ok(day));
        assert_eq!(
            key_ttl(Some(31 * day), 30 * day),
            Err(KeyTtlRefusal::AboveMax(30 * day))
        );
        assert_eq!(
            key_ttl(Some(Duration::ZERO), 30 * day),
            Err(KeyTtlRefusal::NotPositive)
        );
    }

    #[test]
    fn an_exchange_issues_only_for_a_live_key_of_an_enabled_owner() {
        let key = |revoked, expire, disabled| PresentedKey {
            key_id: "k".into(),
            roles: roles(&["guest", "admin"]),
            expire_time: at(expire),
            revoked,
            user: user("u", &["user"], disabled),
        };
        match exchange(Some(key(false, 100, false)), at(10)) {
            Exchange::Issue { user, key_id } => {
                assert_eq!(key_id, "k");
                assert_eq!(user.roles, ["guest"], "never more than the owner may grant");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(exchange(None, at(10)), Exchange::Unknown));
        assert!(matches!(
            exchange(Some(key(false, 10, false)), at(10)),
            Exchange::Expired
        ));
        assert!(matches!(
            exchange(Some(key(true, 100, false)), at(10)),
            Exchange::Revoked
        ));
        assert!(matches!(
            exchange(Some(key(true, 100, true)), at(10)),
            Exchange::UserDisabled
        ));
    }

    fn presented(rotate_time: Option<SystemTime>) -> Presented {
        Presented {
            session_id: "s".into(),
            expire_time: at(1000),
            rotate_time,
            session_revoked: false,
            user: User {
                id: "u".into(),
                username: "alice".into(),
                roles: vec![],
                create_time: at(0),
                disabled: false,
            },
        }
    }

    #[test]
    fn rotation_repeats_within_grace_and_treats_later_reuse_as_theft() {
        let (grace, ttl) = (Duration::from_secs(5), Duration::from_secs(100));
        let fresh = rotation(&presented(None), None, at(10), grace, ttl);
        assert!(matches!(fresh, Rotation::Rotated { expire_time, .. } if expire_time == at(110)));
        let rotated = presented(Some(at(10)));
        let repeat = rotation(&rotated, Some((None, at(110))), at(12), grace, ttl);
        assert!(matches!(repeat, Rotation::Rotated { expire_time, .. } if expire_time == at(110)));
        let late = rotation(&rotated, Some((None, at(110))), at(20), grace, ttl);
        assert!(matches!(late, Rotation::Reused(_)));
        let successor_used = rotation(&rotated, Some((Some(at(11)), at(110))), at(12), grace, ttl);
        assert!(matches!(successor_used, Rotation::Reused(_)));
        let mut disabled = presented(None);
        disabled.user.disabled = true;
        disabled.session_revoked = true;
        assert!(matches!(
            rotation(&disabled, None, at(10), grace, ttl),
            Rotation::UserDisabled
        ));
        assert!(matches!(
            rotation(&presented(None), None, at(1000), grace, ttl),
            Rotation::Expired
        ));
    }
}
