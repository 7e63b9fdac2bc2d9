//! The OpenMetadata version behind the gateway: asked once the upstream answers
//! (`GET /api/v1/system/version`, unauthenticated), logged at info, with a warning when it is
//! outside the versions the shipped rules were generated for. Never blocks nor fails start-up.

use std::time::Duration;

use http::{HeaderValue, Request};
use serde_json::Value;

use crate::http::body::{collect_limited, empty};
use crate::http::upstream::Upstream;

/// The oldest and newest OpenMetadata server lines (major, minor) the shipped rules cover:
/// the inventories `rules/generate.py` reads. Raise `NEWEST` when a new inventory is added.
pub(crate) const OLDEST: (u64, u64) = (1, 9);
pub(crate) const NEWEST: (u64, u64) = (2, 0);

/// "1.9 to 2.0", for messages.
pub(crate) fn supported_range() -> String {
    format!("{}.{} to {}.{}", OLDEST.0, OLDEST.1, NEWEST.0, NEWEST.1)
}

/// How a server version relates to the supported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Support {
    Supported,
    /// Older than [`OLDEST`]: fields it has that later versions renamed may be missed.
    TooOld,
    /// Newer than [`NEWEST`]: secret fields it added are caught only by the safety net.
    TooNew,
    /// Not a `major.minor[...]` version.
    Unknown,
}

/// Where `version` (`1.9.3`, `2.0.0-SNAPSHOT`, `v1.10.2`) falls; only major.minor count.
pub(crate) fn supported(version: &str) -> Support {
    let Some(mm) = major_minor(version) else {
        return Support::Unknown;
    };
    if mm < OLDEST {
        Support::TooOld
    } else if mm > NEWEST {
        Support::TooNew
    } else {
        Support::Supported
    }
}

fn major_minor(version: &str) -> Option<(u64, u64)> {
    let v = version.trim();
    let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
    let mut parts = v.split('.');
    let number = |p: Option<&str>| -> Option<u64> {
        let p = p?;
        let digits = p.len() - p.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        p[..digits].parse().ok()
    };
    let major = number(parts.next())?;
    let minor = number(parts.next())?;
    Some((major, minor))
}

/// What one attempt learned.
#[derive(Debug)]
enum Attempt {
    /// The upstream named its version.
    Version(String),
    /// The upstream answered, but not with a version: asking again will not help.
    NoVersion(String),
    /// Unreachable, timed out or 5xx: ask again later.
    Retry(String),
}

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(60);
const MAX_BODY: usize = 64 * 1024;
/// The question is the gateway's own, not a client's: it says so (the tests' emulator does not
/// record it among forwarded requests).
const USER_AGENT: &str = concat!("om-secrets-proxy/", env!("CARGO_PKG_VERSION"));

/// Asks the upstream its version until it answers (backoff 0.5 s doubling to 60 s), then logs
/// it. Spawned at serve start-up; aborted at shutdown.
pub(crate) async fn log_upstream_version(upstream: Upstream) {
    let mut delay = FIRST_RETRY;
    loop {
        match ask(&upstream).await {
            Attempt::Version(v) => {
                report(&v);
                return;
            }
            Attempt::NoVersion(why) => {
                tracing::warn!(
                    answer = %why,
                    supported = %supported_range(),
                    "cannot tell the upstream OpenMetadata version from GET /api/v1/system/version"
                );
                return;
            }
            Attempt::Retry(why) if delay == FIRST_RETRY => tracing::info!(
                reason = %why,
                "upstream OpenMetadata not answering yet: its version is logged once it does"
            ),
            Attempt::Retry(why) => tracing::debug!(
                reason = %why,
                retry_in_ms = delay.as_millis() as u64,
                "upstream OpenMetadata version not known yet"
            ),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

fn report(version: &str) {
    let range = supported_range();
    match supported(version) {
        Support::Supported => tracing::info!(
            openmetadata_version = %version,
            supported = %range,
            "upstream OpenMetadata version"
        ),
        Support::TooOld => tracing::warn!(
            openmetadata_version = %version,
            supported = %range,
            "upstream OpenMetadata is older than the versions the rules cover: secret fields it names differently are caught only by the name-based safety net"
        ),
        Support::TooNew => tracing::warn!(
            openmetadata_version = %version,
            supported = %range,
            "upstream OpenMetadata is newer than the versions the rules cover: secret fields it added are caught only by the name-based safety net; regenerate the rules (rules/generate.py)"
        ),
        Support::Unknown => tracing::warn!(
            openmetadata_version = %version,
            supported = %range,
            "upstream OpenMetadata version is not major.minor: cannot tell whether the rules cover it"
        ),
    }
}

async fn ask(upstream: &Upstream) -> Attempt {
    let uri = match upstream.uri_for("/api/v1/system/version") {
        Ok(u) => u,
        Err(e) => return Attempt::NoVersion(e.to_string()),
    };
    let mut req = Request::new(empty());
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    let resp = match upstream.send(req).await {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let status = resp.status();
    if status.is_server_error() {
        return Attempt::Retry(format!("status {status}"));
    }
    if !status.is_success() {
        return Attempt::NoVersion(format!("status {status}"));
    }
    let body = match tokio::time::timeout(
        upstream.timeout(),
        collect_limited(resp.into_body(), MAX_BODY),
    )
    .await
    {
        Ok(Ok(b)) => b,
        _ => return Attempt::Retry("the answer's body did not arrive".into()),
    };
    version_of(&body)
}

/// The `version` member of the answer, cut to a sane length for the log.
fn version_of(body: &[u8]) -> Attempt {
    let v: Option<String> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|j| j.get("version")?.as_str().map(str::to_string));
    match v {
        Some(v) => Attempt::Version(v.chars().take(64).collect()),
        None => Attempt::NoVersion("the answer has no \"version\" string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_1_9_to_2_0_are_supported() {
        for v in [
            "1.9.0",
            "1.9.3",
            "1.10.1",
            "1.13.6",
            "2.0.0",
            "2.0.7",
            "2.0.7-SNAPSHOT",
            "v1.9.17",
            " 1.12 ",
        ] {
            assert_eq!(supported(v), Support::Supported, "{v}");
        }
    }

    #[test]
    fn versions_outside_the_range_are_too_old_or_too_new() {
        for v in ["1.8.9", "1.0.0", "0.13.2", "1.8"] {
            assert_eq!(supported(v), Support::TooOld, "{v}");
        }
        for v in ["2.1.0", "3.0.0", "2.10.0-rc1", "10.0"] {
            assert_eq!(supported(v), Support::TooNew, "{v}");
        }
    }

    #[test]
    fn a_version_without_major_and_minor_is_unknown() {
        for v in ["", "2", "latest", "x.y.z", "1.", ".9.1"] {
            assert_eq!(supported(v), Support::Unknown, "{v:?}");
        }
    }

    #[test]
    fn the_answer_names_the_version_or_says_why_not() {
        let v = version_of(br#"{"version":"1.9.3","revision":"abc","timestamp":1}"#);
        assert!(
            matches!(v, Attempt::Version(ref s) if s == "1.9.3"),
            "{v:?}"
        );
        for body in [
            &br#"{"revision":"abc"}"#[..],
            b"<html>",
            br#"{"version":3}"#,
        ] {
            assert!(
                matches!(version_of(body), Attempt::NoVersion(_)),
                "{body:?}"
            );
        }
        let long = format!(r#"{{"version":"{}"}}"#, "9".repeat(500));
        assert!(matches!(version_of(long.as_bytes()), Attempt::Version(ref s) if s.len() == 64));
    }

    #[test]
    fn the_range_reads_as_oldest_to_newest() {
        assert_eq!(supported_range(), "1.9 to 2.0");
    }
}
