//! FHIR `instant` / `dateTime` / `date` strings to unix milliseconds (proleptic Gregorian,
//! UTC), for the verifier's time comparisons. Partial dates (`YYYY`, `YYYY-MM`,
//! `YYYY-MM-DD`) stand for their first instant.

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str, len: usize) -> Option<u32> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Parses a FHIR date, dateTime or instant into unix milliseconds; `None` if malformed.
pub fn parse_millis(s: &str) -> Option<i64> {
    if s.len() > 40 {
        return None;
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let y = num(parts.next()?, 4)?;
    let m = parts.next().map(|p| num(p, 2)).unwrap_or(Some(1))?;
    let d = parts.next().map(|p| num(p, 2)).unwrap_or(Some(1))?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    let Some(t) = time else {
        return Some(days * 86_400_000);
    };
    // hh:mm:ss[.fff...](Z|+hh:mm|-hh:mm)
    let (clock, offset_ms) = if let Some(c) = t.strip_suffix('Z') {
        (c, 0i64)
    } else {
        let i = t.rfind(['+', '-'])?;
        let (c, off) = t.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (i64::from(num(oh, 2)?) * 3_600_000 + i64::from(num(om, 2)?) * 60_000),
        )
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (clock, None),
    };
    let mut hms = hms.split(':');
    let h = num(hms.next()?, 2)?;
    let mi = num(hms.next()?, 2)?;
    let se = num(hms.next()?, 2)?;
    if hms.next().is_some() || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let ms = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{f:0<3}");
            i64::from(padded[..3].parse::<u32>().ok()?)
        }
        Some(_) => return None,
    };
    Some(
        days * 86_400_000
            + i64::from(h) * 3_600_000
            + i64::from(mi) * 60_000
            + i64::from(se) * 1000
            + ms
            - offset_ms,
    )
}

/// A FHIR instant of unix milliseconds (for the report).
pub fn instant(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fhir_times() {
        assert_eq!(parse_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_millis("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_millis("2023-11-15T00:13:20.123+02:00"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_millis("2023-11-14"), Some(1_699_920_000_000));
        assert_eq!(parse_millis("2023"), parse_millis("2023-01-01"));
        for bad in [
            "",
            "2023-13-01",
            "23-01-01",
            "2023-01-01T25:00:00Z",
            "2023-01-01T10:00",
        ] {
            assert_eq!(parse_millis(bad), None, "{bad}");
        }
        assert_eq!(instant(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }
}
