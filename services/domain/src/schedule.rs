//! 5-field cron schedules in UTC (SPEC §10): `minute hour day-of-month month
//! day-of-week`. Each field is a comma list of `*`, `N`, `N-M`, each with an
//! optional `/STEP` (`N/STEP` means `N-max/STEP`, as in Vixie cron); months
//! and weekdays also take English three-letter names; weekday 7 is Sunday.
//!
//! Vixie's day rule: when both day-of-month and day-of-week are restricted
//! (neither starts with `*`), a day matches if *either* matches; otherwise
//! both must. A service's schedule is validated by this very parser
//! (`service::validate::schedule`), so every stored schedule parses for the
//! cron runner.
//!
//! Own parser rather than a crate: the ones looked at either want 6–7 fields
//! (seconds, years) or treat the day rule differently; the grammar is small
//! and the brute-force property test below pins it down.

use chrono::{DateTime, Datelike, Duration, DurationRound, TimeZone, Timelike, Utc};

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron schedule {schedule:?}: {why}")]
pub struct ScheduleError {
    schedule: String,
    why: String,
}

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Test-only seconds field (`None`: second 0 of each matching minute).
    seconds: Option<u64>,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

/// How far ahead a schedule is searched before it is declared never due
/// (e.g. `0 0 30 2 *`): leap days repeat within 8 years.
const HORIZON_DAYS: i64 = 366 * 8;

impl ScheduleError {
    /// What is wrong, without the schedule itself.
    pub fn reason(&self) -> &str {
        &self.why
    }
}

impl Schedule {
    /// Parses a 5-field schedule.
    pub fn parse(s: &str) -> Result<Self, ScheduleError> {
        Self::parse_fields(s, false)
    }

    /// Parses a schedule with an extra leading seconds field (6 fields), so
    /// tests can observe several runs within seconds. Not reachable from a
    /// service's settings, which are validated as 5 fields.
    pub fn parse_with_seconds(s: &str) -> Result<Self, ScheduleError> {
        Self::parse_fields(s, true)
    }

    fn parse_fields(s: &str, with_seconds: bool) -> Result<Self, ScheduleError> {
        let err = |why: String| ScheduleError {
            schedule: s.chars().take(100).collect(),
            why,
        };
        let mut parts: Vec<&str> = s.split_whitespace().collect();
        let want = if with_seconds { 6 } else { 5 };
        if parts.len() != want {
            let names = if with_seconds {
                "second minute hour day-of-month month day-of-week"
            } else {
                "minute hour day-of-month month day-of-week"
            };
            return Err(err(format!(
                "needs {want} fields ({names}), got {}",
                parts.len()
            )));
        }
        let seconds = if with_seconds {
            Some(field(parts.remove(0), &SECOND).map_err(err)?)
        } else {
            None
        };
        let mut masks = [0u64; 5];
        for (i, (part, f)) in parts.iter().zip(FIELDS.iter()).enumerate() {
            masks[i] = field(part, f).map_err(err)?;
        }
        // Weekday 7 is Sunday.
        if masks[4] & (1 << 7) != 0 {
            masks[4] = (masks[4] | 1) & !(1 << 7);
        }
        Ok(Schedule {
            seconds,
            minutes: masks[0],
            hours: masks[1],
            days: masks[2],
            months: masks[3],
            weekdays: masks[4],
            days_restricted: !parts[2].starts_with('*'),
            weekdays_restricted: !parts[4].starts_with('*'),
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = bit(self.days, t.day());
        let dow = bit(self.weekdays, t.weekday().num_days_from_sunday());
        if self.days_restricted && self.weekdays_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// Whether `t` (to the second) is a due time.
    pub fn matches(&self, t: &DateTime<Utc>) -> bool {
        let second_ok = match self.seconds {
            Some(mask) => bit(mask, t.second()),
            None => t.second() == 0,
        };
        second_ok
            && t.nanosecond() == 0
            && bit(self.months, t.month())
            && self.day_matches(t)
            && bit(self.hours, t.hour())
            && bit(self.minutes, t.minute())
    }

    /// The first due time strictly after `after`; `None` if the schedule
    /// never fires (e.g. 30 February).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let step = if self.seconds.is_some() {
            Duration::seconds(1)
        } else {
            Duration::minutes(1)
        };
        let mut t = after.duration_trunc(step).ok()? + step;
        let end = after + Duration::days(HORIZON_DAYS);
        while t <= end {
            if !bit(self.months, t.month()) {
                t = start_of_next_month(t)?;
                continue;
            }
            if !self.day_matches(&t) {
                t = t.duration_trunc(Duration::days(1)).ok()? + Duration::days(1);
                continue;
            }
            if !bit(self.hours, t.hour()) {
                t = t.duration_trunc(Duration::hours(1)).ok()? + Duration::hours(1);
                continue;
            }
            if !bit(self.minutes, t.minute()) {
                t = t.duration_trunc(Duration::minutes(1)).ok()? + Duration::minutes(1);
                continue;
            }
            match self.seconds {
                Some(mask) if !bit(mask, t.second()) => t += Duration::seconds(1),
                _ => return Some(t),
            }
        }
        None
    }

    /// The latest due time in `(after, now]`, if any. Used after a start or
    /// a pause: missed due times are not caught up one by one, only the
    /// latest one runs.
    pub fn latest_due(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Never look back further than a day before `now`: a due time older
        // than that is not worth a run, and the walk stays short.
        let mut from = after.max(now - Duration::days(1));
        let mut latest = None;
        while let Some(t) = self.next_after(from) {
            if t > now {
                break;
            }
            latest = Some(t);
            from = t;
        }
        latest
    }
}

fn bit(mask: u64, v: u32) -> bool {
    v < 64 && mask & (1u64 << v) != 0
}

fn start_of_next_month(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()
}

/// One field's mask.
fn field(part: &str, f: &Field) -> Result<u64, String> {
    let mut mask = 0u64;
    for item in part.split(',') {
        let shown: String = item.chars().take(20).collect();
        mask |= item_mask(item, f).map_err(|why| format!("{} {shown:?}: {why}", f.name))?;
    }
    Ok(mask)
}

fn item_mask(item: &str, f: &Field) -> Result<u64, String> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => match s.parse::<u32>() {
            Ok(n) if n >= 1 && n <= f.max => (r, n),
            _ => return Err(format!("step must be a number from 1 to {}", f.max)),
        },
        None => (item, 1),
    };
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = f.names.iter().position(|n| *n == lower) {
            // Month names start at 1, weekday names at 0 (Sunday).
            return Ok(i as u32 + f.min);
        }
        match s.parse::<u32>() {
            Ok(n) if (f.min..=f.max).contains(&n) => Ok(n),
            _ => Err(format!("must be a number from {} to {}", f.min, f.max)),
        }
    };
    let (lo, hi) = if range == "*" {
        (f.min, f.max)
    } else {
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (value(a)?, value(b)?);
                if a > b {
                    return Err("range start is after its end".to_owned());
                }
                (a, b)
            }
            // `N/STEP` runs from N to the field's end.
            None if item.contains('/') => (value(range)?, f.max),
            None => {
                let v = value(range)?;
                (v, v)
            }
        }
    };
    let mut mask = 0u64;
    let mut v = lo;
    while v <= hi {
        mask |= 1 << v;
        v += step;
    }
    Ok(mask)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(schedule: &str, after: &str) -> Option<String> {
        Schedule::parse(schedule)
            .unwrap()
            .next_after(at(after))
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    }

    #[test]
    fn next_due_times() {
        let cases = [
            ("* * * * *", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"),
            ("* * * * *", "2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z"),
            (
                "*/15 * * * *",
                "2026-01-01T00:16:00Z",
                "2026-01-01T00:30:00Z",
            ),
            (
                "5/20 * * * *",
                "2026-01-01T00:26:00Z",
                "2026-01-01T00:45:00Z",
            ),
            ("0 3 * * *", "2026-01-01T03:00:00Z", "2026-01-02T03:00:00Z"),
            (
                "30 9-17/4 * * *",
                "2026-01-01T13:30:00Z",
                "2026-01-01T17:30:00Z",
            ),
            ("0 0 1 * *", "2026-01-15T00:00:00Z", "2026-02-01T00:00:00Z"),
            (
                "0 0 * * mon",
                "2026-01-01T00:00:00Z",
                "2026-01-05T00:00:00Z",
            ),
            ("0 0 * * 7", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"),
            (
                "0 0 * * SUN",
                "2026-01-01T00:00:00Z",
                "2026-01-04T00:00:00Z",
            ),
            (
                "0 0 1 jan,jul *",
                "2026-02-01T00:00:00Z",
                "2026-07-01T00:00:00Z",
            ),
            (
                "59 23 31 12 *",
                "2026-01-01T00:00:00Z",
                "2026-12-31T23:59:00Z",
            ),
            // Leap day: the next one is in 2028.
            ("0 0 29 2 *", "2026-01-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            // Vixie: both restricted → either. The 13th or any Friday.
            (
                "0 0 13 * fri",
                "2026-02-01T00:00:00Z",
                "2026-02-06T00:00:00Z",
            ),
            (
                "0 0 13 * fri",
                "2026-02-07T00:00:00Z",
                "2026-02-13T00:00:00Z",
            ),
            // Day-of-week `*`: only the day of month counts.
            ("0 0 13 * *", "2026-02-07T00:00:00Z", "2026-02-13T00:00:00Z"),
            // Day-of-month `*/2` is unrestricted-looking but starts with `*`:
            // both must match (Vixie), odd days that are Mondays.
            (
                "0 0 */2 * mon",
                "2026-01-01T00:00:00Z",
                "2026-01-05T00:00:00Z",
            ),
            (
                "0 0 */2 * mon",
                "2026-01-05T00:00:00Z",
                "2026-01-19T00:00:00Z",
            ),
        ];
        for (schedule, after, want) in cases {
            assert_eq!(
                next(schedule, after).as_deref(),
                Some(want),
                "{schedule} after {after}"
            );
        }
        assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), None);
        assert_eq!(next("0 0 31 4,6 *", "2026-01-01T00:00:00Z"), None);
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "5-1 * * * *",
            "*/0 * * * *",
            "*/61 * * * *",
            "a * * * *",
            "* * * foo *",
            "1,,2 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn seconds_only_in_the_test_constructor() {
        let s = Schedule::parse_with_seconds("*/2 * * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:01Z")),
            Some(at("2026-01-01T00:00:02Z"))
        );
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:02.5Z")),
            Some(at("2026-01-01T00:00:04Z"))
        );
        assert!(Schedule::parse("*/2 * * * * *").is_err());
    }

    #[test]
    fn latest_due_runs_only_the_last_missed_time() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        assert_eq!(
            s.latest_due(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:35:00Z")),
            Some(at("2026-01-01T00:30:00Z"))
        );
        assert_eq!(
            s.latest_due(at("2026-01-01T00:30:00Z"), at("2026-01-01T00:35:00Z")),
            None
        );
        // Inclusive of now.
        assert_eq!(
            s.latest_due(at("2026-01-01T00:30:00Z"), at("2026-01-01T00:40:00Z")),
            Some(at("2026-01-01T00:40:00Z"))
        );
    }

    /// Minute-by-minute matcher straight from the definition, sharing
    /// nothing with `next_after` but the parsed masks.
    fn brute_next(s: &Schedule, after: DateTime<Utc>, limit_minutes: i64) -> Option<DateTime<Utc>> {
        let mut t = after.duration_trunc(Duration::minutes(1)).unwrap() + Duration::minutes(1);
        for _ in 0..limit_minutes {
            if s.matches(&t) {
                return Some(t);
            }
            t += Duration::minutes(1);
        }
        None
    }

    fn item(min: u32, max: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            (min..=max).prop_map(|v| v.to_string()),
            (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (1..=max.max(1)).prop_map(|s| format!("*/{s}")),
            (min..=max, 1..=max.max(1)).prop_map(|(a, s)| format!("{a}/{s}")),
        ]
    }

    fn field_strategy(min: u32, max: u32) -> impl Strategy<Value = String> {
        prop::collection::vec(item(min, max), 1..3).prop_map(|v| v.join(","))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn next_after_agrees_with_brute_force(
            minute in field_strategy(0, 59),
            hour in field_strategy(0, 23),
            dom in field_strategy(1, 31),
            month in field_strategy(1, 12),
            dow in field_strategy(0, 7),
            start in 0i64..(4 * 365 * 24 * 60),
            second in 0u32..60,
        ) {
            let text = format!("{minute} {hour} {dom} {month} {dow}");
            let s = Schedule::parse(&text).unwrap();
            let after = at("2025-01-01T00:00:00Z")
                + Duration::minutes(start)
                + Duration::seconds(i64::from(second));
            // Beyond the window the brute force gives up; then `next_after`
            // must not have found anything inside it either.
            let limit = 62 * 24 * 60;
            let want = brute_next(&s, after, limit);
            let got = s.next_after(after);
            match want {
                Some(w) => prop_assert_eq!(got, Some(w), "{}", text),
                None => prop_assert!(got.is_none_or(|g| g > after + Duration::minutes(limit)), "{}", text),
            }
        }
    }
}
