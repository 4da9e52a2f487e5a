//! Cron schedules as Kubernetes reads them: the standard five fields
//! (minute, hour, day of month, month, day of week) or a descriptor
//! (`@hourly`, `@every 90m`, …), with an optional `TZ=`/`CRON_TZ=`
//! prefix, exactly as robfig/cron's standard parser accepts them, and the
//! next activation after an instant in a time zone.

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{civil, Span, Timestamp, Zoned};

/// Why a schedule cannot be read (robfig/cron's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("empty spec string")]
    Empty,
    #[error("expected exactly 5 fields, found {found}: {fields:?}")]
    FieldCount { found: usize, fields: Vec<String> },
    #[error("unrecognized descriptor: {0}")]
    UnknownDescriptor(String),
    #[error("failed to parse duration {spec}: {reason}")]
    BadDuration { spec: String, reason: String },
    #[error("provided bad location {name}: {reason}")]
    BadLocation { name: String, reason: String },
    #[error("{0}")]
    Field(String),
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    kind: Kind,
    /// The zone of a `TZ=` prefix; otherwise the caller's.
    zone: Option<TimeZone>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Spec(Fields),
    /// `@every <duration>`: a fixed delay, whole seconds.
    Every(Duration),
}

/// One bit per allowed value, plus `STAR` when the field was `*`/`?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

const STAR: u64 = 1 << 63;

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

impl Schedule {
    /// Parses a schedule the way `cron.ParseStandard` does.
    pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
        let mut spec = spec.trim();
        if spec.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut zone = None;
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let end = spec.find(' ').unwrap_or(spec.len());
            let (_, name) = spec[..end].split_once('=').unwrap_or(("", ""));
            zone = Some(TimeZone::get(name).map_err(|e| ScheduleError::BadLocation {
                name: name.to_owned(),
                reason: e.to_string(),
            })?);
            spec = spec[end..].trim();
        }
        if let Some(descriptor) = spec.strip_prefix('@') {
            let kind = parse_descriptor(descriptor, spec)?;
            return Ok(Schedule { kind, zone });
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
                fields: fields.iter().map(|s| s.to_string()).collect(),
            });
        }
        let parsed = Fields {
            minute: parse_field(fields[0], &MINUTES)?,
            hour: parse_field(fields[1], &HOURS)?,
            dom: parse_field(fields[2], &DOM)?,
            month: parse_field(fields[3], &MONTHS)?,
            dow: parse_field(fields[4], &DOW)?,
        };
        Ok(Schedule {
            kind: Kind::Spec(parsed),
            zone,
        })
    }

    /// The zone a `TZ=`/`CRON_TZ=` prefix named, if any.
    pub fn prefix_zone(&self) -> Option<&TimeZone> {
        self.zone.as_ref()
    }

    /// The first activation strictly after `after`, reading the fields in
    /// `zone` (a `TZ=` prefix wins). `None` when there is none within five
    /// years (e.g. `0 0 30 2 *`).
    pub fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let zone = self.zone.as_ref().unwrap_or(zone);
        match &self.kind {
            Kind::Every(delay) => {
                // Whole seconds, as robfig's ConstantDelaySchedule.
                let secs = after.as_second() + delay.as_secs() as i64;
                Timestamp::from_second(secs).ok()
            }
            Kind::Spec(fields) => fields.next(after.to_zoned(zone.clone())),
        }
    }
}

fn parse_descriptor(descriptor: &str, spec: &str) -> Result<Kind, ScheduleError> {
    let every_fields = |minute: u64, hour: u64, dom: u64, month: u64, dow: u64| {
        Kind::Spec(Fields {
            minute,
            hour,
            dom,
            month,
            dow,
        })
    };
    let all = |b: &Bounds| bits(b.min, b.max, 1) | STAR;
    Ok(match descriptor {
        "yearly" | "annually" => every_fields(1, 1, 1 << 1, 1 << 1, all(&DOW)),
        "monthly" => every_fields(1, 1, 1 << 1, all(&MONTHS), all(&DOW)),
        "weekly" => every_fields(1, 1, all(&DOM), all(&MONTHS), 1),
        "daily" | "midnight" => every_fields(1, 1, all(&DOM), all(&MONTHS), all(&DOW)),
        "hourly" => every_fields(1, all(&HOURS), all(&DOM), all(&MONTHS), all(&DOW)),
        _ => {
            if let Some(duration) = descriptor.strip_prefix("every ") {
                let delay = parse_go_duration(duration.trim()).map_err(|reason| {
                    ScheduleError::BadDuration {
                        spec: spec.to_owned(),
                        reason,
                    }
                })?;
                // Under a second rounds up to one; otherwise whole seconds.
                let secs = if delay < Duration::from_secs(1) {
                    1
                } else {
                    delay.as_secs()
                };
                Kind::Every(Duration::from_secs(secs))
            } else {
                return Err(ScheduleError::UnknownDescriptor(spec.to_owned()));
            }
        }
    })
}

/// Go's `time.ParseDuration` for the units a schedule can use.
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("time: invalid duration {s:?}"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {s:?}"))?;
        let value: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("time: invalid duration {s:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

fn bits(min: u32, max: u32, step: u32) -> u64 {
    let mut b = 0u64;
    let mut i = min;
    while i <= max {
        b |= 1 << i;
        i += step;
    }
    b
}

/// A field: a comma-separated list of ranges.
fn parse_field(field: &str, bounds: &Bounds) -> Result<u64, ScheduleError> {
    let mut b = 0;
    for range in field.split(',') {
        b |= parse_range(range, bounds)?;
    }
    Ok(b)
}

/// `*`, `?`, `n`, `a-b`, each optionally `/step` (`n/step` means `n-max/step`).
fn parse_range(expr: &str, bounds: &Bounds) -> Result<u64, ScheduleError> {
    let err = |m: String| ScheduleError::Field(m);
    let (range, step) = match expr.split('/').collect::<Vec<_>>().as_slice() {
        [range] => (*range, None),
        [range, step] => (*range, Some(*step)),
        _ => return Err(err(format!("too many slashes: {expr}"))),
    };
    let low_high: Vec<&str> = range.split('-').collect();
    let single = low_high.len() == 1;
    let (start, mut end, mut extra);
    if range == "*" || range == "?" {
        start = bounds.min;
        end = bounds.max;
        extra = STAR;
    } else {
        start = parse_value(low_high[0], bounds)?;
        end = match low_high.len() {
            1 => start,
            2 => parse_value(low_high[1], bounds)?,
            _ => return Err(err(format!("too many hyphens: {expr}"))),
        };
        extra = 0;
    }
    let step = match step {
        None => 1,
        Some(s) => {
            let n = parse_int(s)?;
            // "N/step" runs from N to the field's maximum.
            if single {
                end = bounds.max;
            }
            if n > 1 {
                extra = 0;
            }
            n
        }
    };
    if start < bounds.min {
        return Err(err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            bounds.min
        )));
    }
    if end > bounds.max {
        return Err(err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            bounds.max
        )));
    }
    if start > end {
        return Err(err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(err(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    Ok(bits(start, end, step) | extra)
}

fn parse_value(s: &str, bounds: &Bounds) -> Result<u32, ScheduleError> {
    let lower = s.to_ascii_lowercase();
    if let Some((_, v)) = bounds.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    parse_int(s)
}

fn parse_int(s: &str) -> Result<u32, ScheduleError> {
    let n: i64 = s
        .parse()
        .map_err(|e| ScheduleError::Field(format!("failed to parse int from {s}: {e}")))?;
    if n < 0 {
        return Err(ScheduleError::Field(format!(
            "negative number ({n}) not allowed: {s}"
        )));
    }
    u32::try_from(n).map_err(|e| ScheduleError::Field(format!("failed to parse int from {s}: {e}")))
}

fn has(field: u64, value: i8) -> bool {
    value >= 0 && field & (1 << value) != 0
}

impl Fields {
    /// Day of month and day of week: when both are restricted, either
    /// may match (cron's OR rule); when either is `*`, both must.
    fn day_matches(&self, t: &Zoned) -> bool {
        let dom = has(self.dom, t.day());
        let dow = has(self.dow, t.weekday().to_sunday_zero_offset());
        if self.dom & STAR != 0 || self.dow & STAR != 0 {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// robfig/cron's search: move forward field by field, from months down
    /// to minutes, resetting the smaller fields the first time one moves,
    /// and start over when a larger field wraps. Hours and minutes advance
    /// in elapsed time, so DST gaps are skipped and folds run once.
    fn next(&self, start: Zoned) -> Option<Timestamp> {
        let tz = start.time_zone().clone();
        // The next whole second (schedules have no seconds field: 0).
        let mut t = start
            .checked_add(Span::new().nanoseconds(1_000_000_000 - start.subsec_nanosecond() as i64))
            .ok()?;
        let at = |d: civil::Date, h: i8, m: i8| d.at(h, m, 0, 0).to_zoned(tz.clone()).ok();
        let mut added = false;
        let year_limit = t.year() + 5;
        'wrap: loop {
            if t.year() > year_limit {
                return None;
            }
            while !has(self.month, t.month()) {
                if !added {
                    added = true;
                    t = at(civil::date(t.year(), t.month(), 1), 0, 0)?;
                }
                t = t.checked_add(Span::new().months(1)).ok()?;
                if t.month() == 1 {
                    continue 'wrap;
                }
            }
            while !self.day_matches(&t) {
                if !added {
                    added = true;
                    t = at(t.date(), 0, 0)?;
                }
                t = t.checked_add(Span::new().days(1)).ok()?;
                // Midnight may have moved by a DST shift: go back to it.
                if t.hour() != 0 {
                    let shift = if t.hour() > 12 {
                        24 - t.hour() as i64
                    } else {
                        -(t.hour() as i64)
                    };
                    t = t.checked_add(Span::new().hours(shift)).ok()?;
                }
                if t.day() == 1 {
                    continue 'wrap;
                }
            }
            while !has(self.hour, t.hour()) {
                if !added {
                    added = true;
                    t = at(t.date(), t.hour(), 0)?;
                }
                t = t.checked_add(Span::new().hours(1)).ok()?;
                if t.hour() == 0 {
                    continue 'wrap;
                }
            }
            while !has(self.minute, t.minute()) {
                if !added {
                    added = true;
                    t = t.checked_sub(Span::new().seconds(t.second() as i64)).ok()?;
                }
                t = t.checked_add(Span::new().minutes(1)).ok()?;
                if t.minute() == 0 {
                    continue 'wrap;
                }
            }
            // The seconds field is always 0.
            if t.second() != 0 {
                added = true;
                t = t
                    .checked_add(Span::new().seconds(60 - t.second() as i64))
                    .ok()?;
                continue 'wrap;
            }
            return Some(t.timestamp());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_activations() {
        let utc = TimeZone::UTC;
        // (schedule, after, expected next)
        let cases: &[(&str, &str, &str)] = &[
            (
                "*/1 * * * *",
                "2024-01-01T10:00:00Z",
                "2024-01-01T10:01:00Z",
            ),
            (
                "*/1 * * * *",
                "2024-01-01T10:00:30.5Z",
                "2024-01-01T10:01:00Z",
            ),
            (
                "*/15 * * * *",
                "2024-01-01T10:07:00Z",
                "2024-01-01T10:15:00Z",
            ),
            (
                "5/20 * * * *",
                "2024-01-01T10:26:00Z",
                "2024-01-01T10:45:00Z",
            ),
            (
                "0 9-17/4 * * *",
                "2024-01-01T13:00:00Z",
                "2024-01-01T17:00:00Z",
            ),
            ("30 6 * * *", "2024-01-01T07:00:00Z", "2024-01-02T06:30:00Z"),
            (
                "0 0 1,15 * *",
                "2024-01-02T00:00:00Z",
                "2024-01-15T00:00:00Z",
            ),
            // Month ends: the 31st skips short months; Feb 29 in a leap year.
            (
                "0 12 31 * *",
                "2024-01-31T12:00:00Z",
                "2024-03-31T12:00:00Z",
            ),
            ("0 0 29 2 *", "2024-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            (
                "59 23 * * *",
                "2024-12-31T23:59:00Z",
                "2025-01-01T23:59:00Z",
            ),
            (
                "0 0 1 jan *",
                "2024-06-01T00:00:00Z",
                "2025-01-01T00:00:00Z",
            ),
            (
                "0 0 * NOV-dec *",
                "2024-03-01T00:00:00Z",
                "2024-11-01T00:00:00Z",
            ),
            // Weekdays by name and number (2024-01-01 was a Monday).
            (
                "0 8 * * mon-fri",
                "2024-01-05T09:00:00Z",
                "2024-01-08T08:00:00Z",
            ),
            ("0 8 * * 0", "2024-01-01T00:00:00Z", "2024-01-07T08:00:00Z"),
            (
                "0 8 ? * SAT",
                "2024-01-01T00:00:00Z",
                "2024-01-06T08:00:00Z",
            ),
            // Day of month OR day of week when both are restricted.
            ("0 0 13 * 5", "2024-01-01T00:00:00Z", "2024-01-05T00:00:00Z"),
            ("0 0 13 * 5", "2024-01-12T00:00:00Z", "2024-01-13T00:00:00Z"),
            // …but AND when one is a star (every Friday).
            ("0 0 * * 5", "2024-01-12T00:00:00Z", "2024-01-19T00:00:00Z"),
            // */1 keeps the star, */2 does not.
            (
                "0 0 */1 * 1",
                "2024-01-02T00:00:00Z",
                "2024-01-08T00:00:00Z",
            ),
            (
                "0 0 */2 * 1",
                "2024-01-02T00:00:00Z",
                "2024-01-03T00:00:00Z",
            ),
            ("@hourly", "2024-01-01T10:00:00Z", "2024-01-01T11:00:00Z"),
            ("@daily", "2024-01-01T10:00:00Z", "2024-01-02T00:00:00Z"),
            ("@midnight", "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"),
            ("@weekly", "2024-01-01T10:00:00Z", "2024-01-07T00:00:00Z"),
            ("@monthly", "2024-01-31T10:00:00Z", "2024-02-01T00:00:00Z"),
            ("@yearly", "2024-01-31T10:00:00Z", "2025-01-01T00:00:00Z"),
            ("@annually", "2024-01-31T10:00:00Z", "2025-01-01T00:00:00Z"),
            ("@every 90m", "2024-01-01T10:00:00Z", "2024-01-01T11:30:00Z"),
            (
                "TZ=Asia/Tokyo 0 9 * * *",
                "2024-01-01T00:00:00Z",
                "2024-01-02T00:00:00Z",
            ),
            (
                "CRON_TZ=Asia/Tokyo 0 9 * * *",
                "2024-01-01T01:00:00Z",
                "2024-01-02T00:00:00Z",
            ),
        ];
        for (spec, after, want) in cases {
            let schedule = Schedule::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                schedule.next(ts(after), &utc),
                Some(ts(want)),
                "{spec} after {after}"
            );
        }
    }

    #[test]
    fn daylight_saving_time_in_a_zone() {
        let ny = TimeZone::get("America/New_York").unwrap();
        let cases: &[(&str, &str, &str)] = &[
            // 2024-03-10: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist
            // that day, so the next run is the following day.
            ("30 2 * * *", "2024-03-09T08:00:00Z", "2024-03-11T06:30:00Z"),
            // 03:00 local is the first instant after the gap (07:00Z).
            ("0 3 * * *", "2024-03-10T05:00:00Z", "2024-03-10T07:00:00Z"),
            // A daily 09:00 keeps local time across the change: 14:00Z then 13:00Z.
            ("0 9 * * *", "2024-03-09T14:00:00Z", "2024-03-10T13:00:00Z"),
            // 2024-11-03: 01:30 happens twice (EDT 05:30Z, EST 06:30Z); like
            // robfig/cron, both run.
            ("30 1 * * *", "2024-11-03T04:00:00Z", "2024-11-03T05:30:00Z"),
            ("30 1 * * *", "2024-11-03T05:30:00Z", "2024-11-03T06:30:00Z"),
            ("30 1 * * *", "2024-11-03T06:30:00Z", "2024-11-04T06:30:00Z"),
            // Hourly runs in elapsed time through the fold.
            ("0 * * * *", "2024-11-03T05:00:00Z", "2024-11-03T06:00:00Z"),
        ];
        for (spec, after, want) in cases {
            let schedule = Schedule::parse(spec).unwrap();
            assert_eq!(
                schedule.next(ts(after), &ny),
                Some(ts(want)),
                "{spec} after {after}"
            );
        }
    }

    #[test]
    fn impossible_dates_have_no_next_time() {
        let s = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(s.next(ts("2024-01-01T00:00:00Z"), &TimeZone::UTC), None);
    }

    #[test]
    fn bad_schedules_are_refused_with_robfig_messages() {
        let cases: &[(&str, &str)] = &[
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4"),
            ("* * * * * *", "expected exactly 5 fields, found 6"),
            ("60 * * * *", "end of range (60) above maximum (59)"),
            ("* 24 * * *", "end of range (24) above maximum (23)"),
            ("* * 0 * *", "beginning of range (0) below minimum (1)"),
            ("* * * 13 *", "end of range (13) above maximum (12)"),
            ("* * * * 7", "end of range (7) above maximum (6)"),
            (
                "5-2 * * * *",
                "beginning of range (5) beyond end of range (2)",
            ),
            (
                "* * * dec-feb *",
                "beginning of range (12) beyond end of range (2)",
            ),
            ("*/0 * * * *", "step of range should be a positive number"),
            ("1-2-3 * * * *", "too many hyphens"),
            ("*/2/3 * * * *", "too many slashes"),
            ("x * * * *", "failed to parse int from x"),
            ("* * * foo *", "failed to parse int from foo"),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            ("@every 5x", "failed to parse duration"),
            (
                "TZ=Mars/Olympus 0 * * * *",
                "provided bad location Mars/Olympus",
            ),
        ];
        for (spec, want) in cases {
            let err = Schedule::parse(spec).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{spec:?}: {err:?} should contain {want:?}"
            );
        }
    }
}
