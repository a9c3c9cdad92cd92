//! Range checks for the services' command-line flags, written as clap value parsers: a value out of range
//! is a usage error (exit status 2, the flag named, before anything starts) rather than a panic or a
//! service quietly running with a value it cannot honour. The flags both services have share their ranges
//! here, so the two cannot drift.

use std::{ops::RangeInclusive, path::PathBuf, time::Duration};

/// `--shutdown-grace`: some drain, and no stalled client holding the process for long.
pub const SHUTDOWN_GRACE: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(600);

/// `--db-max-connections`: at least one connection, and no more than a PostgreSQL server would accept.
pub const DB_MAX_CONNECTIONS: RangeInclusive<u64> = 1..=1000;

/// `--db-acquire-timeout`: a wait a query can survive; never longer than a call may live (30 s).
pub const DB_ACQUIRE_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(30);

/// A value parser for a flag whose value may hold a secret (a database URL's password): a refusal names the
/// flag and says why, like any other (exit status 2), but never repeats the value, as clap's own message
/// would.
#[derive(Clone)]
pub struct Unechoed<F>(pub F);

impl<T, F> clap::builder::TypedValueParser for Unechoed<F>
where
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let refuse = |why: String| {
            let flag = arg.map_or_else(|| "a flag".to_owned(), |arg| format!("'{arg}'"));
            let message =
                format!("invalid value for {flag} (not repeated here: it may hold a secret): {why}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refuse("not UTF-8".to_owned()))?;
        (self.0)(text).map_err(refuse)
    }
}

/// A duration as humantime reads it (`500ms`, `10s`, `30days`), within `range`.
pub fn duration_within(value: &str, range: RangeInclusive<Duration>) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value)
        .map_err(|e| format!("not a duration such as 500ms, 10s, 15m or 30days ({e})"))?;
    if range.contains(&duration) {
        Ok(duration)
    } else {
        Err(format!(
            "must be between {} and {}",
            show(*range.start()),
            show(*range.end())
        ))
    }
}

/// Writes a range bound the way a user would (`100ms`, `1m`, `365days`); humantime's own formatting
/// writes 365 days as months, days and hours.
fn show(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_nanos() != 0 {
        return format!("{}ms", duration.as_millis());
    }
    match secs {
        0 => "0s".to_owned(),
        _ if secs > 86_400 && secs.is_multiple_of(86_400) => format!("{}days", secs / 86_400),
        _ if secs.is_multiple_of(3_600) => format!("{}h", secs / 3_600),
        _ if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    }
}

/// `--tls-cert`, `--auth-client-cert`: a PEM file with at least one certificate.
pub fn certificate_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    crate::transport::tls::check_certificate_file(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `--tls-key`, `--auth-client-key`: a PEM private key in a file no group or other may access.
pub fn private_key_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    crate::transport::tls::check_private_key_file(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `--tls-client-ca`, `--auth-ca`: a PEM file of CA certificates usable as trust anchors.
pub fn ca_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    crate::transport::tls::check_ca(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `--internal-clients`: a DNS name, as a certificate would carry it.
pub fn dns_name(value: &str) -> Result<String, String> {
    match rustls::pki_types::DnsName::try_from(value) {
        Ok(_) => Ok(value.to_owned()),
        Err(_) => Err("must be a DNS name, e.g. posts-svc.internal".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unechoed_value_is_refused_naming_the_flag_and_the_reason_but_not_the_value() {
        let command = clap::Command::new("svc").arg(clap::Arg::new("url").long("url").value_parser(
            Unechoed(|v: &str| match v.contains("sslmode=bogus") {
                true => Err("sslmode: expected one of ...".to_owned()),
                false => Ok(v.to_owned()),
            }),
        ));
        let error = command
            .clone()
            .try_get_matches_from(["svc", "--url", "postgres://u:hunter2@db/x?sslmode=bogus"])
            .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert_eq!(error.exit_code(), 2);
        let message = error.to_string();
        assert!(
            message.contains("--url") && message.contains("sslmode: expected"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        let matches = command
            .try_get_matches_from(["svc", "--url", "postgres://db/x"])
            .unwrap();
        assert_eq!(matches.get_one::<String>("url").unwrap(), "postgres://db/x");
    }

    #[test]
    fn durations_are_checked_against_their_range_and_the_refusal_says_it() {
        let range = Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
        assert_eq!(duration_within("1s", range.clone()), Ok(Duration::from_secs(1)));
        assert_eq!(
            duration_within("24h", range.clone()),
            Ok(Duration::from_secs(86_400))
        );
        assert_eq!(
            duration_within("999ms", range.clone()),
            Err("must be between 1s and 24h".to_owned())
        );
        assert!(duration_within("100years", range.clone()).is_err());
        assert!(duration_within("soon", range).is_err());
        assert_eq!(
            duration_within("0s", SHUTDOWN_GRACE),
            Err("must be between 100ms and 10m".to_owned())
        );
        assert_eq!(show(Duration::ZERO), "0s");
        assert_eq!(show(Duration::from_secs(365 * 86_400)), "365days");
        assert_eq!(show(Duration::from_secs(90)), "90s");
    }
}
