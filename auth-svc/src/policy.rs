//! The decisions auth-svc's storage rules make, as plain functions of what a rule has loaded: when failed
//! logins lock, what presenting a refresh token leads to, and who is the last admin. The store loads and
//! applies in one transaction; these decide, and are tested without a database.

use std::time::{Duration, SystemTime};

use watchword::reason::Reason;

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
}

/// Whether `caller` (as stored now, `None` if gone) may manage what `owner_id` owns (a session, an API
/// key): its owner may, and so may an enabled admin. A disabled account may manage nothing.
pub fn may_manage(caller: Option<&User>, owner_id: &str) -> bool {
    caller.is_some_and(|caller| !caller.disabled && (caller.id == owner_id || caller.is_admin()))
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
