//! Time formats SSM uses on the wire: ISO-8601 instants and durations (GetCommandInvocation)
//! and epoch seconds (list operations).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for instants before it).
fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Epoch seconds with millisecond precision, as a JSON number, e.g. `1795665000.123`.
pub(crate) fn epoch_seconds(t: SystemTime) -> f64 {
    // Integer millis convert exactly to f64 for the next few hundred thousand years.
    epoch_millis(t) as f64 / 1000.0
}

/// An ISO-8601 UTC instant with milliseconds, e.g. `2026-11-25T03:50:00.123Z`.
pub(crate) fn iso_instant(t: SystemTime) -> String {
    let millis = epoch_millis(t);
    let secs = millis / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    )
}

/// An ISO-8601 duration in seconds with milliseconds, e.g. `PT1.234S`.
pub(crate) fn iso_duration(d: Duration) -> String {
    format!("PT{}.{:03}S", d.as_secs(), d.subsec_millis())
}

/// Parses an ISO-8601 instant as SSM's list filters take it: `2026-11-30T10:00:00Z`, with
/// optional fractional seconds and `Z` or a `±hh:mm` offset (none: UTC), or a bare date
/// (midnight UTC). `None` when malformed.
pub(crate) fn parse_iso_instant(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let year = fixed_digits(parts.next()?, 4)?;
    let month = fixed_digits(parts.next()?, 2)?;
    let day = fixed_digits(parts.next()?, 2)?;
    let days = days_from_civil(year, month, day)?;
    let (seconds, nanos) = match time {
        None => (0, 0),
        Some(time) => parse_time_of_day(time)?,
    };
    let total = days.checked_mul(86_400)?.checked_add(seconds)?;
    let whole = Duration::from_secs(total.unsigned_abs());
    let instant = if total >= 0 {
        UNIX_EPOCH.checked_add(whole)?
    } else {
        UNIX_EPOCH.checked_sub(whole)?
    };
    instant.checked_add(Duration::from_nanos(nanos))
}

/// `hh:mm[:ss[.fff]]` and an optional `Z` / `±hh:mm` offset: seconds since midnight UTC
/// (negative or past a day when the offset says so) and nanoseconds.
fn parse_time_of_day(time: &str) -> Option<(i64, u64)> {
    let (clock, offset) = match time.find(['Z', 'z', '+', '-']) {
        Some(at) => time.split_at(at),
        None => (time, ""),
    };
    let offset_seconds = match offset {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (hours, minutes) = offset[1..].split_once(':')?;
            let (hours, minutes) = (fixed_digits(hours, 2)?, fixed_digits(minutes, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let mut fields = clock.splitn(3, ':');
    let hours = fixed_digits(fields.next()?, 2)?;
    let minutes = fixed_digits(fields.next()?, 2)?;
    let (seconds, nanos) = match fields.next() {
        None => (0, 0),
        Some(seconds) => {
            let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
            let whole = fixed_digits(whole, 2)?;
            if !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 9 {
                return None;
            }
            let nanos = format!("{fraction:0<9}").parse::<u64>().ok()?;
            (whole, nanos)
        }
    };
    if hours > 23 || minutes > 59 || seconds > 60 {
        return None;
    }
    Some((
        hours * 3600 + minutes * 60 + seconds - offset_seconds,
        nanos,
    ))
}

/// Exactly `len` ASCII digits, as a number.
fn fixed_digits(text: &str, len: usize) -> Option<i64> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Days since 1970-01-01 of a proleptic Gregorian date; `None` for an impossible date.
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<i64> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) {
        return None;
    }
    // Years start on 1 March so that the leap day ends them (see `civil_from_days`).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = (month + 9) % 12; // 0 = March
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// Converts days since 1970-01-01 into a proleptic Gregorian (year, month, day).
///
/// Counts in 400-year eras of 146,097 days, with years starting on 1 March so that the
/// leap day falls at the end of a year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the origin to 0000-03-01, which begins an era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    #[test]
    fn formats_instants() {
        assert_eq!(iso_instant(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_instant(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            iso_instant(at(1_795_578_600, 123)),
            "2026-11-25T03:50:00.123Z"
        );
        assert_eq!(
            iso_instant(at(4_107_542_399, 999)),
            "2100-02-28T23:59:59.999Z"
        );
        assert_eq!(
            iso_instant(at(4_107_542_400, 0)),
            "2100-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_instants() {
        let parse = |t| parse_iso_instant(t).map(iso_instant);
        assert_eq!(
            parse("2026-11-30T10:00:00Z").as_deref(),
            Some("2026-11-30T10:00:00.000Z")
        );
        assert_eq!(
            parse("2026-11-30T10:00:00.25Z").as_deref(),
            Some("2026-11-30T10:00:00.250Z")
        );
        assert_eq!(
            parse("2026-11-30T12:30:00+02:30").as_deref(),
            Some("2026-11-30T10:00:00.000Z")
        );
        assert_eq!(
            parse("2000-02-29").as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
        assert_eq!(
            parse("2100-03-01T00:00").as_deref(),
            Some("2100-03-01T00:00:00.000Z")
        );
        for text in &[at(0, 0), at(951_782_400, 5), at(4_107_542_399, 999)] {
            assert_eq!(parse_iso_instant(&iso_instant(*text)), Some(*text));
        }
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T10:00:00.1234567890Z",
            "2026-11-30T10:00:00+2",
            "1795665000",
        ] {
            assert_eq!(parse_iso_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_durations_and_epoch_seconds() {
        assert_eq!(iso_duration(Duration::from_millis(1234)), "PT1.234S");
        assert_eq!(iso_duration(Duration::ZERO), "PT0.000S");
        assert_eq!(epoch_seconds(at(1_795_665_000, 250)), 1_795_665_000.25);
    }
}
