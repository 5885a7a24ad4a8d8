//! Redelivery policy: which upstream statuses count as delivered, which will
//! never succeed, and how long to wait between attempts.

use std::time::Duration;

/// A status as configured: one code (`"404"`) or a class (`"4xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    /// Exactly this code.
    Exact(u16),
    /// Every code of this hundred (`4` for `4xx`).
    Class(u16),
}

impl StatusPattern {
    /// Parse `"204"` or `"2xx"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || format!("{s:?} is not a status code or class (write e.g. \"204\" or \"2xx\")");
        if let Some(c) = t.strip_suffix("xx") {
            let d: u16 = c.parse().map_err(|_| bad())?;
            if (1..=5).contains(&d) && c.len() == 1 {
                return Ok(StatusPattern::Class(d));
            }
            return Err(bad());
        }
        let n: u16 = t.parse().map_err(|_| bad())?;
        if (100..=599).contains(&n) && t.len() == 3 {
            Ok(StatusPattern::Exact(n))
        } else {
            Err(bad())
        }
    }

    fn exact(&self, status: u16) -> bool {
        matches!(self, StatusPattern::Exact(n) if *n == status)
    }

    fn class(&self, status: u16) -> bool {
        matches!(self, StatusPattern::Class(c) if *c == status / 100)
    }
}

impl std::fmt::Display for StatusPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusPattern::Exact(n) => write!(f, "{n}"),
            StatusPattern::Class(c) => write!(f, "{c}xx"),
        }
    }
}

/// What an upstream status means for a spooled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered: remove it from the spool.
    Delivered,
    /// Will never succeed: dead-letter it now.
    Permanent,
    /// Try again later.
    Retry,
}

/// The three status lists of a route. An exact code beats a class, so
/// `permanent = ["4xx"]` with `retry = ["408", "429"]` retries those two.
/// A status no list names is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPolicy {
    /// Delivered.
    pub success: Vec<StatusPattern>,
    /// Never going to succeed.
    pub permanent: Vec<StatusPattern>,
    /// Retried although a class in `permanent` covers them.
    pub retry: Vec<StatusPattern>,
}

impl Default for StatusPolicy {
    fn default() -> Self {
        StatusPolicy {
            success: vec![StatusPattern::Class(2)],
            permanent: vec![StatusPattern::Class(4)],
            retry: vec![StatusPattern::Exact(408), StatusPattern::Exact(429)],
        }
    }
}

impl StatusPolicy {
    /// Judge one upstream status.
    pub fn verdict(&self, status: u16) -> Verdict {
        let lists = [
            (&self.success, Verdict::Delivered),
            (&self.permanent, Verdict::Permanent),
            (&self.retry, Verdict::Retry),
        ];
        for (list, v) in lists {
            if list.iter().any(|p| p.exact(status)) {
                return v;
            }
        }
        for (list, v) in lists {
            if list.iter().any(|p| p.class(status)) {
                return v;
            }
        }
        Verdict::Retry
    }

    /// A pattern named in two lists at the same precision, if any.
    pub fn conflict(&self) -> Option<StatusPattern> {
        let all = [&self.success, &self.permanent, &self.retry];
        for (i, a) in all.iter().enumerate() {
            for b in all.iter().skip(i + 1) {
                if let Some(p) = a.iter().find(|p| b.contains(p)) {
                    return Some(*p);
                }
            }
        }
        None
    }
}

/// Whether a retryable status says the upstream as a whole cannot take
/// requests now (overloaded, or a proxy in front of it has no backend), rather
/// than that it failed on this one message. Such failures pause the whole route
/// so that order is kept; others set only this message aside.
pub fn upstream_wide(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

impl crate::config::Redelivery {
    /// The wait before attempt `n + 1` after `n` failures: [`backoff`] with
    /// this route's bounds and a fresh random draw.
    pub fn wait(&self, n: u32) -> Duration {
        backoff(self.backoff_initial, self.backoff_max, n, fastrand::f64())
    }
}

/// Exponential backoff with jitter: attempt `n` (1-based) waits between half
/// and all of `initial * 2^(n-1)`, capped at `max`. `unit` in [0, 1) is the
/// random draw, passed in so the bounds are testable.
pub fn backoff(initial: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = initial.saturating_mul(1u32 << exp).min(max);
    let unit = unit.clamp(0.0, 1.0);
    full.mul_f64(0.5 + 0.5 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse() {
        assert_eq!(StatusPattern::parse("2xx"), Ok(StatusPattern::Class(2)));
        assert_eq!(StatusPattern::parse("4XX"), Ok(StatusPattern::Class(4)));
        assert_eq!(StatusPattern::parse("204"), Ok(StatusPattern::Exact(204)));
        for bad in [
            "", "6xx", "0xx", "20", "2000", "099", "600", "abc", "xx", "22xx",
        ] {
            assert!(StatusPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_policy() {
        let p = StatusPolicy::default();
        assert_eq!(p.verdict(200), Verdict::Delivered);
        assert_eq!(p.verdict(204), Verdict::Delivered);
        assert_eq!(p.verdict(400), Verdict::Permanent);
        assert_eq!(p.verdict(404), Verdict::Permanent);
        assert_eq!(p.verdict(408), Verdict::Retry);
        assert_eq!(p.verdict(429), Verdict::Retry);
        assert_eq!(p.verdict(500), Verdict::Retry);
        assert_eq!(p.verdict(503), Verdict::Retry);
        assert_eq!(p.verdict(301), Verdict::Retry);
        assert_eq!(p.conflict(), None);
    }

    #[test]
    fn exact_codes_beat_classes() {
        let p = StatusPolicy {
            success: vec![StatusPattern::Class(2), StatusPattern::Exact(409)],
            permanent: vec![StatusPattern::Class(4), StatusPattern::Exact(500)],
            retry: vec![StatusPattern::Exact(202)],
        };
        assert_eq!(p.verdict(409), Verdict::Delivered);
        assert_eq!(p.verdict(500), Verdict::Permanent);
        assert_eq!(p.verdict(202), Verdict::Retry);
        assert_eq!(p.verdict(201), Verdict::Delivered);
        let q = StatusPolicy {
            retry: vec![StatusPattern::Class(2)],
            ..StatusPolicy::default()
        };
        assert_eq!(q.conflict(), Some(StatusPattern::Class(2)));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_cap() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(10);
        for n in 1..=40 {
            let full = (i * 2u32.pow((n - 1).min(20))).min(m);
            let lo = backoff(i, m, n, 0.0);
            let hi = backoff(i, m, n, 0.999_999);
            assert_eq!(lo, full / 2, "attempt {n}");
            assert!(hi <= full && hi > full.mul_f64(0.99), "attempt {n}");
        }
        assert_eq!(backoff(i, m, 0, 0.0), Duration::from_millis(50));
    }
}
