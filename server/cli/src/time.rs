//! Times as a person reads them: ages (`3m12s`), durations, and dates in UTC (`2026-11-24 10:15:30 UTC`). The API
//! carries milliseconds since the Unix epoch; nothing here reads a clock, so every function is tested with fixed
//! values. Dates are UTC because the servers, the agents and the operator may sit in different time zones, and
//! one unambiguous zone is easier to compare across hosts than three local ones.

use muster_schemas::UnixMillis;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// A span in seconds, short and with the precision that matters at its size: `42ms`, `4.2s`, `3m12s`, `5h07m`,
/// `12d03h`. Negative or non-finite spans (a clock set back) read `0ms`.
pub fn span(secs: f64) -> String {
    let secs = if secs.is_finite() && secs > 0.0 { secs } else { 0.0 };
    if secs < 1.0 {
        // A request on a few hosts ends within tens of milliseconds: `0.0s` would hide it.
        return format!("{:.0}ms", (secs * 1000.0).floor());
    }
    if secs < MINUTE as f64 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    if s < HOUR {
        format!("{}m{:02}s", s / MINUTE, s % MINUTE)
    } else if s < DAY {
        format!("{}h{:02}m", s / HOUR, (s % HOUR) / MINUTE)
    } else {
        format!("{}d{:02}h", s / DAY, (s % DAY) / HOUR)
    }
}

/// [`span`] of an optional value; `-` for none (e.g. no heartbeat heard yet).
pub fn span_or_dash(secs: Option<f64>) -> String {
    secs.map_or_else(|| "-".to_string(), span)
}

/// The span between two instants in milliseconds.
pub fn span_millis(from: UnixMillis, to: UnixMillis) -> String {
    span(to.saturating_sub(from) as f64 / 1000.0)
}

/// `2026-11-24 10:15:30 UTC`; `-` for 0, which the API uses for "not yet".
pub fn date(at: UnixMillis) -> String {
    if at == 0 {
        return "-".to_string();
    }
    let secs = at / 1000;
    let (y, m, d) = civil_from_days((secs / DAY) as i64);
    let t = secs % DAY;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", t / HOUR, (t % HOUR) / MINUTE, t % MINUTE)
}

/// `2026-11-24 10:15:30 UTC (3m12s ago)` as seen at `now`; `-` for 0.
pub fn date_and_age(at: UnixMillis, now: UnixMillis) -> String {
    if at == 0 {
        return "-".to_string();
    }
    format!("{} ({} ago)", date(at), span_millis(at, now))
}

/// `3m12s ago` as seen at `now`; `-` for 0. For table cells, where a full date is too wide.
pub fn age(at: UnixMillis, now: UnixMillis) -> String {
    if at == 0 {
        return "-".to_string();
    }
    format!("{} ago", span_millis(at, now))
}

/// Year, month, day of a day count since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's
/// `civil_from_days`, exact for every date a `u64` of milliseconds can hold).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_keep_the_precision_that_matters_at_their_size() {
        let rows = [
            (0.0, "0ms"),
            (0.0425, "42ms"),
            (0.9999, "999ms"),
            (1.0, "1.0s"),
            (59.94, "59.9s"),
            (60.0, "1m00s"),
            (192.7, "3m12s"),
            (3599.0, "59m59s"),
            (3600.0, "1h00m"),
            (5.0 * 3600.0 + 7.0 * 60.0 + 59.0, "5h07m"),
            (86_400.0 * 12.0 + 3.0 * 3600.0, "12d03h"),
            (-3.0, "0ms"),
            (f64::NAN, "0ms"),
        ];
        for (secs, want) in rows {
            assert_eq!(span(secs), want, "{secs}");
        }
        assert_eq!(span_or_dash(None), "-");
        assert_eq!(span_millis(2_000, 1_000), "0ms", "a clock set back is no negative age");
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(date(1), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(951_782_400_000), "2000-02-29 00:00:00 UTC", "a leap day of a century leap year");
        assert_eq!(date(1_795_897_730_319), "2026-11-28 20:28:50 UTC");
        assert_eq!(date(4_102_444_799_000), "2099-12-31 23:59:59 UTC");
        assert_eq!(date(0), "-", "0 means not yet");
    }

    #[test]
    fn ages_read_from_now() {
        let at = 1_795_897_730_319;
        assert_eq!(age(at, at + 192_000), "3m12s ago");
        assert_eq!(date_and_age(at, at + 4_000), "2026-11-28 20:28:50 UTC (4.0s ago)");
        assert_eq!(age(0, at), "-");
    }
}
