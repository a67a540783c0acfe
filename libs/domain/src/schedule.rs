//! When a [`Schedule`] fires: checking one, and finding its next firing.
//!
//! A cron schedule is evaluated in its IANA time zone, so `0 2 * * *` in `Europe/Berlin` fires at
//! 02:00 Berlin time in winter and in summer. Across a daylight-saving change the rules are
//! cron's usual ones (as `croner` implements them): a fixed time that falls into the hour the
//! clock skips runs right after the jump; a fixed time in the hour that repeats runs once, the
//! first time; patterns that fire every so many minutes run on both passes of a repeated hour.
//!
//! An interval schedule fires at every multiple of its length since the Unix epoch (UTC), so
//! `3600` fires on the hour and the firings do not depend on when anything started. That keeps
//! [`next_after`] a pure function, which every scheduler replica computes alike.

use std::str::FromStr;

use arca_events::Schedule;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The shortest interval: a minute.
pub const MIN_INTERVAL_SECONDS: u64 = 60;

/// The longest interval: 366 days. Anything longer is a typo, and would overflow nothing but
/// the patience of whoever waits for it.
pub const MAX_INTERVAL_SECONDS: u64 = 366 * 24 * 3600;

/// The longest cron expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 200;

/// Why a schedule cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression `{expression}`: {reason}")]
    Cron { expression: String, reason: String },
    #[error("`{0}` is not an IANA time zone (such as `Europe/Berlin` or `UTC`)")]
    TimeZone(String),
    #[error("an interval of {seconds} s is not between {MIN_INTERVAL_SECONDS} s and {MAX_INTERVAL_SECONDS} s")]
    Interval { seconds: u64 },
}

/// A checked schedule, ready to compute firings. Parse once and keep it when firing often.
#[derive(Clone, Debug)]
pub struct CompiledSchedule(Compiled);

#[derive(Clone, Debug)]
enum Compiled {
    Cron { cron: Box<Cron>, timezone: Tz },
    Interval { seconds: i64 },
}

impl CompiledSchedule {
    /// Checks `schedule`: a cron expression of 5 fields (minute precision) or 6 (with seconds
    /// first) that fires at all, in a known IANA time zone; or an interval from a minute to a year.
    pub fn parse(schedule: &Schedule) -> Result<Self, ScheduleError> {
        match schedule {
            Schedule::Cron { expression, timezone } => {
                let cron = parse_cron(expression)?;
                let timezone = Tz::from_str(timezone).map_err(|_| ScheduleError::TimeZone(timezone.clone()))?;
                let compiled = Self(Compiled::Cron { cron: Box::new(cron), timezone });
                // Without a year field a pattern fires within any 28 years or never: ask once from a
                // fixed instant, so the check does not depend on the time it is made.
                if compiled.next_after(DateTime::UNIX_EPOCH).is_none() {
                    return Err(ScheduleError::Cron {
                        expression: expression.chars().take(64).collect(),
                        reason: "never fires (it names no real day)".into(),
                    });
                }
                Ok(compiled)
            }
            Schedule::Interval { seconds } => {
                if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(seconds) {
                    return Err(ScheduleError::Interval { seconds: *seconds });
                }
                let seconds = i64::try_from(*seconds).expect("bounded by MAX_INTERVAL_SECONDS");
                Ok(Self(Compiled::Interval { seconds }))
            }
        }
    }

    /// The first firing strictly after `after`; `None` only past the year 5000.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.0 {
            Compiled::Cron { cron, timezone } => {
                let local = after.with_timezone(timezone);
                let next = cron.find_next_occurrence(&local, false).ok()?;
                Some(next.with_timezone(&Utc))
            }
            Compiled::Interval { seconds } => {
                let next = after.timestamp().div_euclid(*seconds).checked_add(1)?.checked_mul(*seconds)?;
                Utc.timestamp_opt(next, 0).single()
            }
        }
    }
}

/// Checks a schedule; see [`CompiledSchedule::parse`].
pub fn check(schedule: &Schedule) -> Result<(), ScheduleError> {
    CompiledSchedule::parse(schedule).map(drop)
}

/// The first firing of `schedule` strictly after `after`; `None` when the schedule is invalid or
/// never fires again. The scheduler calls this with the last firing it handled.
pub fn next_after(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    CompiledSchedule::parse(schedule).ok()?.next_after(after)
}

fn parse_cron(expression: &str) -> Result<Cron, ScheduleError> {
    let error = |reason: String| ScheduleError::Cron { expression: expression.chars().take(64).collect(), reason };
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(error(format!("is longer than {MAX_EXPRESSION_BYTES} bytes")));
    }
    let fields = expression.split_whitespace().count();
    let nickname = expression.trim_start().starts_with('@');
    if !nickname && !(5..=6).contains(&fields) {
        return Err(error(format!(
            "has {fields} fields; expected 5 (minute hour day month weekday) or 6 (seconds first)"
        )));
    }
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    parser.parse(expression).map_err(|e| error(tidy(&e.to_string())))
}

/// `croner`'s messages as ours read: lower-case start, no trailing period.
fn tidy(message: &str) -> String {
    let message = message.trim().trim_end_matches('.');
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expression: &str, timezone: &str) -> Schedule {
        Schedule::Cron { expression: expression.into(), timezone: timezone.into() }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn good_schedules_pass() {
        for schedule in [
            cron("0 2 * * *", "UTC"),
            cron("*/15 * * * *", "Europe/Berlin"),
            cron("30 0 2 * * MON-FRI", "America/New_York"),
            cron("@daily", "Asia/Tokyo"),
            cron("0 0 L * *", "UTC"),
            Schedule::Interval { seconds: 60 },
            Schedule::Interval { seconds: MAX_INTERVAL_SECONDS },
        ] {
            assert_eq!(check(&schedule), Ok(()), "{schedule:?}");
        }
    }

    #[test]
    fn bad_schedules_say_why() {
        for (schedule, why) in [
            (cron("", "UTC"), "has 0 fields"),
            (cron("* * * *", "UTC"), "has 4 fields"),
            (cron("0 0 2 * * * 2030", "UTC"), "has 7 fields"),
            (cron("61 * * * *", "UTC"), "cron expression `61 * * * *`"),
            (cron("0 25 * * *", "UTC"), "cron expression"),
            (cron("every day", "UTC"), "cron expression"),
            (cron(&"1,".repeat(120), "UTC"), "longer than"),
            (cron("0 2 * * *", "Europe/Atlantis"), "not an IANA time zone"),
            (cron("0 2 * * *", "europe/berlin"), "not an IANA time zone"),
            (cron("0 2 * * *", ""), "not an IANA time zone"),
            (Schedule::Interval { seconds: 0 }, "interval of 0 s"),
            (Schedule::Interval { seconds: 59 }, "interval of 59 s"),
            (Schedule::Interval { seconds: MAX_INTERVAL_SECONDS + 1 }, "not between"),
            (Schedule::Interval { seconds: u64::MAX }, "not between"),
        ] {
            let error = check(&schedule).expect_err(&format!("{schedule:?} passed"));
            let message = error.to_string();
            assert!(message.contains(why), "{schedule:?}: {message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn intervals_fire_on_multiples_since_the_epoch() {
        let hourly = Schedule::Interval { seconds: 3600 };
        assert_eq!(next_after(&hourly, utc("2026-03-01T10:20:00Z")), Some(utc("2026-03-01T11:00:00Z")));
        assert_eq!(next_after(&hourly, utc("2026-03-01T11:00:00Z")), Some(utc("2026-03-01T12:00:00Z")));
        assert_eq!(next_after(&hourly, utc("2026-03-01T10:59:59.999Z")), Some(utc("2026-03-01T11:00:00Z")));
        let every_90s = Schedule::Interval { seconds: 90 };
        assert_eq!(next_after(&every_90s, utc("1970-01-01T00:00:00Z")), Some(utc("1970-01-01T00:01:30Z")));
        assert_eq!(next_after(&every_90s, utc("1969-12-31T23:59:00Z")), Some(utc("1970-01-01T00:00:00Z")));
    }

    #[test]
    fn cron_fires_strictly_after() {
        let daily = cron("0 2 * * *", "UTC");
        assert_eq!(next_after(&daily, utc("2026-03-01T01:59:59Z")), Some(utc("2026-03-01T02:00:00Z")));
        assert_eq!(next_after(&daily, utc("2026-03-01T02:00:00Z")), Some(utc("2026-03-02T02:00:00Z")));
        assert_eq!(next_after(&daily, utc("2026-03-01T02:00:00.500Z")), Some(utc("2026-03-02T02:00:00Z")));
        let with_seconds = cron("30 * * * * *", "UTC");
        assert_eq!(next_after(&with_seconds, utc("2026-03-01T10:00:30Z")), Some(utc("2026-03-01T10:01:30Z")));
    }

    #[test]
    fn cron_follows_the_time_zone_across_daylight_saving() {
        let nightly = cron("0 3 * * *", "Europe/Berlin");
        // Winter (UTC+1): 03:00 in Berlin is 02:00 UTC.
        assert_eq!(next_after(&nightly, utc("2026-03-27T12:00:00Z")), Some(utc("2026-03-28T02:00:00Z")));
        // Clocks go forward on 2026-03-29 at 02:00 → 03:00; 03:00 exists and is now 01:00 UTC.
        assert_eq!(next_after(&nightly, utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T01:00:00Z")));
        // Summer (UTC+2).
        assert_eq!(next_after(&nightly, utc("2026-03-29T12:00:00Z")), Some(utc("2026-03-30T01:00:00Z")));

        // 02:30 does not exist on 2026-03-29: it runs right after the jump, at 03:00 local.
        let skipped = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(next_after(&skipped, utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T01:00:00Z")));

        // 02:30 happens twice on 2026-10-25 (clocks go back 03:00 → 02:00): a daily job runs once, the first time.
        let repeated = cron("30 2 * * *", "Europe/Berlin");
        let first = next_after(&repeated, utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        assert_eq!(next_after(&repeated, first), Some(utc("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn cron_that_never_fires_is_refused() {
        for expression in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"] {
            let error = check(&cron(expression, "UTC")).unwrap_err();
            assert!(error.to_string().contains("never fires"), "{error}");
            assert_eq!(next_after(&cron(expression, "UTC"), utc("2026-01-01T00:00:00Z")), None);
        }
        assert_eq!(check(&cron("0 0 29 2 *", "UTC")), Ok(()), "leap days come");
    }

    #[test]
    fn invalid_schedules_have_no_next() {
        assert_eq!(next_after(&cron("nope", "UTC"), utc("2026-01-01T00:00:00Z")), None);
        assert_eq!(next_after(&Schedule::Interval { seconds: 1 }, utc("2026-01-01T00:00:00Z")), None);
    }
}
