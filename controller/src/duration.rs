//! Durations as the CRDs write them: `90s`, `30m`, `8h`, `1h30m` (the schema's
//! `^([0-9]+(s|m|h))+$`).

use std::time::Duration;

/// Parses a duration of whole hours, minutes and seconds such as `1h30m`.
pub fn parse(input: &str) -> Result<Duration, String> {
    let invalid = || format!("{input:?} is not a duration such as 90s, 30m or 1h30m");
    if input.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in input.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(invalid()),
        };
        let n: u64 = digits.parse().map_err(|_| invalid())?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(invalid)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("90s", 90)]
    #[case("30m", 1800)]
    #[case("8h", 28800)]
    #[case("1h30m", 5400)]
    #[case("1h0m5s", 3605)]
    #[case("0s", 0)]
    fn parses(#[case] input: &str, #[case] seconds: u64) {
        assert_eq!(parse(input), Ok(Duration::from_secs(seconds)));
    }

    #[rstest]
    #[case("")]
    #[case("30")]
    #[case("m")]
    #[case("1.5h")]
    #[case("1d")]
    #[case("-5m")]
    #[case("99999999999999999999h")]
    fn refuses(#[case] input: &str) {
        assert!(parse(input).unwrap_err().contains("not a duration"), "{input}");
    }
}
