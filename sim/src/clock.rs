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
    fn formats_durations_and_epoch_seconds() {
        assert_eq!(iso_duration(Duration::from_millis(1234)), "PT1.234S");
        assert_eq!(iso_duration(Duration::ZERO), "PT0.000S");
        assert_eq!(epoch_seconds(at(1_795_665_000, 250)), 1_795_665_000.25);
    }
}
