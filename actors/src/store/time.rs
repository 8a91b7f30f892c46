//! Time helpers: unix milliseconds <-> FHIR instants and day strings (proleptic Gregorian,
//! UTC). The store stamps `meta.lastUpdated` and AuditEvent `recorded` with these.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current time in unix milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// FHIR instant `YYYY-MM-DDThh:mm:ss.sssZ` of unix milliseconds.
pub fn instant(millis: u64) -> String {
    let secs = millis / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let (hh, mm, ss, ms) = (rem / 3600, (rem / 60) % 60, rem % 60, millis % 1000);
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z");
    }
    // Every write stamps a few instants (meta.lastUpdated, the AuditEvent's and the
    // Provenance's): digits by hand, as `format!` with widths costs several times more.
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u64);
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(d));
    put(11, 2, hh);
    put(14, 2, mm);
    put(17, 2, ss);
    put(20, 3, ms);
    String::from_utf8_lossy(&b).into_owned()
}

/// Day string `YYYY-MM-DD` of unix milliseconds.
pub fn day(millis: u64) -> String {
    let (y, m, d) = civil_from_days((millis / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [-1000, 0, 11_017, 19_700, 60_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(instant(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(day(1_700_000_000_123), "2023-11-14");
    }

    /// The hand-written digits of `instant` agree with `format!` (zero padding included),
    /// and a year past 9999 falls back to it.
    #[test]
    fn instant_digits_match_format() {
        let reference = |millis: u64| {
            let secs = millis / 1000;
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let rem = secs % 86_400;
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3600,
                (rem / 60) % 60,
                rem % 60,
                millis % 1000
            )
        };
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        let mut millis = 7_u64;
        for _ in 0..2000 {
            assert_eq!(instant(millis), reference(millis));
            millis = millis
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1)
                % 400_000_000_000_000;
        }
        assert_eq!(instant(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }
}
