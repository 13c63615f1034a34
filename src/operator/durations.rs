//! Go-style durations (`90s`, `15m`, `720h`, `1h30m`), the format Kubernetes users know. The
//! API server validates the syntax (CEL); this parses it.

use std::time::Duration;

/// A malformed duration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a duration such as 90s, 15m or 720h")]
pub struct DurationError {
    /// The text.
    pub value: String,
}

/// Parse a Go duration (units `ms`, `s`, `m`, `h`; decimals allowed).
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        value: value.to_owned(),
    };
    if value.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    let mut rest = value;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        if number_len == 0 {
            return Err(err());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| err())?;
        rest = &rest[number_len..];
        let (unit, seconds) = if let Some(r) = rest.strip_prefix("ms") {
            (r, 0.001)
        } else if let Some(r) = rest.strip_prefix('s') {
            (r, 1.0)
        } else if let Some(r) = rest.strip_prefix('m') {
            (r, 60.0)
        } else if let Some(r) = rest.strip_prefix('h') {
            (r, 3600.0)
        } else {
            return Err(err());
        };
        total += number * seconds;
        rest = unit;
    }
    Ok(Duration::from_secs_f64(total))
}

/// Format whole seconds back as a compact Go duration (`1h30m`, `45s`).
pub fn format(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "30d", "h", "10", "-1h", "1h 30m"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_secs(45)), "45s");
        assert_eq!(format(Duration::from_secs(7 * 24 * 3600)), "168h");
    }
}
