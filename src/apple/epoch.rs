//! The Apple epoch: chat.db stores dates as nanoseconds since 2001-01-01T00:00:00Z (seconds in
//! databases written before macOS 10.13; edit-history `d` values are seconds as a float).

/// Seconds between the Unix epoch and the Apple epoch (2001-01-01T00:00:00Z).
pub const APPLE_EPOCH_UNIX_SECONDS: i64 = 978_307_200;

/// Nanoseconds per second.
pub const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Raw `date` values whose magnitude is below this are seconds, not nanoseconds: 10^11 seconds
/// is more than 3,000 years, while 10^11 nanoseconds is under two minutes after the epoch.
const SECONDS_THRESHOLD: i64 = 100_000_000_000;

/// Normalises a raw chat.db date (nanoseconds on current systems, seconds on old ones) to
/// nanoseconds since the Apple epoch. Zero stays zero ("no date").
pub fn normalize_to_ns(raw: i64) -> i64 {
    if raw != 0 && raw.unsigned_abs() < SECONDS_THRESHOLD as u64 {
        raw.saturating_mul(NANOS_PER_SECOND)
    } else {
        raw
    }
}

/// Apple-epoch nanoseconds from an edit-history `d` value (seconds as a float), truncated to
/// whole seconds as Apple's own tools report them. Non-finite or out-of-range values give None.
pub fn ns_from_float_seconds(seconds: f64) -> Option<i64> {
    if !seconds.is_finite() || seconds.abs() > (i64::MAX / NANOS_PER_SECOND) as f64 {
        return None;
    }
    Some((seconds.trunc() as i64) * NANOS_PER_SECOND)
}

/// Unix nanoseconds for Apple-epoch nanoseconds.
pub fn apple_ns_to_unix_ns(apple_ns: i64) -> i128 {
    apple_ns as i128 + APPLE_EPOCH_UNIX_SECONDS as i128 * NANOS_PER_SECOND as i128
}

/// Apple-epoch nanoseconds for Unix nanoseconds (saturating).
pub fn unix_ns_to_apple_ns(unix_ns: i128) -> i64 {
    let ns = unix_ns - APPLE_EPOCH_UNIX_SECONDS as i128 * NANOS_PER_SECOND as i128;
    ns.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The current time in Apple-epoch nanoseconds, from the system real-time clock.
pub fn now_apple_ns() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    unix_ns_to_apple_ns(unix)
}

/// RFC 3339 UTC with nine fractional digits (`2024-01-01T00:00:00.000000000Z`) for
/// Apple-epoch nanoseconds. Dates outside the proleptic range supported are clamped.
pub fn rfc3339_from_apple_ns(apple_ns: i64) -> String {
    // As rfc3339_from_unix_ns(apple_ns_to_unix_ns(apple_ns)), in 64-bit arithmetic (128-bit
    // division is a library call): the epochs differ by whole seconds, and Apple seconds plus
    // the offset stay far inside i64.
    let secs = apple_ns.div_euclid(NANOS_PER_SECOND) + APPLE_EPOCH_UNIX_SECONDS;
    let nanos = apple_ns.rem_euclid(NANOS_PER_SECOND) as u32;
    rfc3339_from_unix_parts(secs as i128, nanos)
}

/// RFC 3339 UTC with nine fractional digits for Unix nanoseconds.
pub fn rfc3339_from_unix_ns(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(NANOS_PER_SECOND as i128);
    let nanos = unix_ns.rem_euclid(NANOS_PER_SECOND as i128) as u32;
    rfc3339_from_unix_parts(secs, nanos)
}

/// RFC 3339 for Unix seconds and nanoseconds (`0..10⁹`), seconds clamped to jiff's range.
fn rfc3339_from_unix_parts(secs: i128, nanos: u32) -> String {
    let secs = secs.clamp(
        jiff::Timestamp::MIN.as_second() as i128,
        jiff::Timestamp::MAX.as_second() as i128,
    ) as i64;
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let Some(year) = u32::try_from(y).ok().filter(|y| *y <= 9_999) else {
        // Years before 0 (jiff's range reaches -9999): the formatter's sign and width rules.
        return format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            tod / 3600,
            tod % 3600 / 60,
            tod % 60
        );
    };
    // The same text written digit by digit (this runs for every record).
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], m);
    put_digits(&mut text[8..10], d);
    put_digits(&mut text[11..13], (tod / 3600) as u32);
    put_digits(&mut text[14..16], (tod % 3600 / 60) as u32);
    put_digits(&mut text[17..19], (tod % 60) as u32);
    put_digits(&mut text[20..29], nanos);
    // ASCII digits and separators: always UTF-8.
    String::from_utf8(text.to_vec()).unwrap_or_default()
}

/// Writes `value` in decimal into `digits`, zero-padded (`value` must fit).
fn put_digits(digits: &mut [u8], mut value: u32) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01 (the well-known
/// era-based conversion; exact for every day jiff's range holds).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
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
    fn nanoseconds_and_seconds_are_told_apart() {
        // 2022-11-18 in nanoseconds (a current database) and in seconds (an old one).
        assert_eq!(normalize_to_ns(690_513_474_000_000_000), 690_513_474_000_000_000);
        assert_eq!(normalize_to_ns(690_513_474), 690_513_474_000_000_000);
        assert_eq!(normalize_to_ns(0), 0);
        assert_eq!(normalize_to_ns(-5), -5_000_000_000);
    }

    #[test]
    fn formats_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339_from_apple_ns(0), "2001-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_from_apple_ns(690_513_474_272_551_100),
            "2022-11-19T01:17:54.272551100Z"
        );
        assert_eq!(rfc3339_from_apple_ns(-1), "2000-12-31T23:59:59.999999999Z");
        assert_eq!(rfc3339_from_apple_ns(i64::MAX).len(), 30);
    }

    #[test]
    fn civil_dates_match_jiff_over_centuries() {
        let mut secs = -300_000_000_000i64;
        while secs < 250_000_000_000 {
            let ours = rfc3339_from_unix_ns(secs as i128 * 1_000_000_000);
            let theirs = jiff::Timestamp::new(secs, 0)
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
                .to_string();
            assert_eq!(ours, theirs);
            secs += 86_400 * 97 + 3_601;
        }
    }

    #[test]
    fn digit_by_digit_matches_the_formatter() {
        let mut ns: i128 = -400_000_000_000 * 1_000_000_000;
        while ns < 300_000_000_000 * 1_000_000_000 {
            let secs = ns.div_euclid(1_000_000_000) as i64;
            let nanos = ns.rem_euclid(1_000_000_000) as u32;
            let t = jiff::Timestamp::new(
                secs.clamp(jiff::Timestamp::MIN.as_second(), jiff::Timestamp::MAX.as_second()),
                0,
            )
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S")
            .to_string();
            assert_eq!(rfc3339_from_unix_ns(ns), format!("{t}.{nanos:09}Z"), "{ns}");
            ns += 3_123_456_789_123_456_789;
        }
        assert_eq!(rfc3339_from_unix_ns(7), "1970-01-01T00:00:00.000000007Z");
        assert!(rfc3339_from_unix_ns(i128::MAX).starts_with("9999-12-"));
    }

    #[test]
    fn apple_and_unix_paths_agree() {
        let mut ns = i64::MIN;
        for _ in 0..5_000 {
            assert_eq!(
                rfc3339_from_apple_ns(ns),
                rfc3339_from_unix_ns(apple_ns_to_unix_ns(ns)),
                "{ns}"
            );
            ns = ns.wrapping_add(3_689_348_814_741_910_323);
        }
        for ns in [i64::MIN, -1, 0, 1, 999_999_999, 1_000_000_000, i64::MAX] {
            assert_eq!(rfc3339_from_apple_ns(ns), rfc3339_from_unix_ns(apple_ns_to_unix_ns(ns)));
        }
    }

    #[test]
    fn float_seconds_truncate() {
        assert_eq!(
            ns_from_float_seconds(690_513_474.272_551_1),
            Some(690_513_474_000_000_000)
        );
        assert_eq!(ns_from_float_seconds(f64::NAN), None);
        assert_eq!(ns_from_float_seconds(1e300), None);
    }

    #[test]
    fn unix_round_trip() {
        let now = now_apple_ns();
        assert_eq!(unix_ns_to_apple_ns(apple_ns_to_unix_ns(now)), now);
        assert!(now > 700_000_000_000_000_000, "the clock is after 2023");
    }
}
