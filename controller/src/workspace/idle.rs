//! Idle culling: when a running desktop has had no keyboard or pointer input for its template's
//! idle timeout, the controller stops it (the home volume stays).
//!
//! The portal's websocket proxy sees the user's input and records it on the Workspace in the
//! [`LAST_ACTIVITY_ANNOTATION`] (RFC 3339, written at most about once a minute). An open but
//! untouched browser tab sends no input, so it does not keep a desktop alive.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Annotation on a Workspace: when the user last typed or moved the pointer in the desktop.
pub const LAST_ACTIVITY_ANNOTATION: &str = "deskpod.io/last-activity";

/// When a desktop becomes idle: `timeout` after the later of its last input and its start (a
/// desktop nobody has opened yet gets the full timeout from when it started). `None` when it does
/// not run or has no timeout. An unreadable activity annotation counts as no input.
pub fn idle_deadline(
    timeout: Option<Duration>,
    started_at: Option<Timestamp>,
    last_activity: Option<&str>,
) -> Option<Timestamp> {
    let timeout = SignedDuration::try_from(timeout?).ok()?;
    let activity = last_activity.and_then(|a| a.parse::<Timestamp>().ok());
    let since = match (started_at, activity) {
        (Some(s), Some(a)) => s.max(a),
        (Some(s), None) => s,
        (None, _) => return None,
    };
    since.checked_add(timeout).ok()
}

/// A human reading of a timeout, for messages and events: `30m`, `2h`, `1h30m`, `45s`.
pub fn describe(timeout: Duration) -> String {
    let s = timeout.as_secs();
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const MIN30: Option<Duration> = Some(Duration::from_secs(1800));

    #[rstest]
    #[case::never_opened(MIN30, Some("2026-11-23T10:00:00Z"), None, Some("2026-11-23T10:30:00Z"))]
    #[case::input_after_start(
        MIN30,
        Some("2026-11-23T10:00:00Z"),
        Some("2026-11-23T10:20:00Z"),
        Some("2026-11-23T10:50:00Z")
    )]
    #[case::input_before_this_start(
        MIN30,
        Some("2026-11-23T10:00:00Z"),
        Some("2026-11-22T18:00:00Z"),
        Some("2026-11-23T10:30:00Z")
    )]
    #[case::garbage_annotation(MIN30, Some("2026-11-23T10:00:00Z"), Some("yesterday"), Some("2026-11-23T10:30:00Z"))]
    #[case::no_timeout(None, Some("2026-11-23T10:00:00Z"), None, None)]
    #[case::not_started(MIN30, None, Some("2026-11-23T10:20:00Z"), None)]
    fn deadline(
        #[case] timeout: Option<Duration>,
        #[case] started: Option<&str>,
        #[case] activity: Option<&str>,
        #[case] expected: Option<&str>,
    ) {
        assert_eq!(idle_deadline(timeout, started.map(t), activity), expected.map(t));
    }

    #[rstest]
    #[case(1800, "30m")]
    #[case(5400, "1h30m")]
    #[case(7200, "2h")]
    #[case(45, "45s")]
    #[case(0, "0s")]
    fn described(#[case] seconds: u64, #[case] text: &str) {
        assert_eq!(describe(Duration::from_secs(seconds)), text);
    }
}
