//! Durations as users write them in Braid resources: `250ms`, `1.5s`, `2m`, `1h30m`. The CRD
//! schema enforces [`PATTERN`]; [`parse`] turns a matching string into a [`Duration`].

use std::time::Duration;

/// The regular expression every duration field of the CRDs must match.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a duration like 250ms, 1.5s, 2m or 1h30m: {reason}")]
pub struct InvalidDuration {
    input: String,
    reason: &'static str,
}

/// Parses a duration such as `1h30m` or `1.5s`.
pub fn parse(input: &str) -> Result<Duration, InvalidDuration> {
    let fail = |reason| InvalidDuration {
        input: input.into(),
        reason,
    };
    if input.is_empty() {
        return Err(fail("it is empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = input;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or(fail("a number has no unit"))?;
        let (number, after) = rest.split_at(number_end);
        let value: f64 = number.parse().map_err(|_| fail("a number is malformed"))?;
        let (unit_seconds, unit_len) = if after.starts_with("ms") {
            (0.001, 2)
        } else if after.starts_with('s') {
            (1.0, 1)
        } else if after.starts_with('m') {
            (60.0, 1)
        } else if after.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(fail("units are ms, s, m and h"));
        };
        total += Duration::try_from_secs_f64(value * unit_seconds)
            .map_err(|_| fail("it is too long"))?;
        rest = &after[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_sums_parts() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn refuses_what_the_pattern_refuses() {
        for bad in ["", "5", "5x", "s", "1..2s", "-1s"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse("5x").is_err_and(|e| e.to_string().contains("\"5x\"")));
    }
}
