//! Kubernetes quantities (`500m`, `2`, `1.5`, `4Gi`, `1e3`) as exact numbers, to compare them.
//!
//! k8s-openapi keeps a quantity as the string the user wrote, so `8Gi` and `8192Mi` are different
//! values to it. [`parse`] turns one into an exact integer count of thousandths of its unit
//! (millicores for CPU, millibytes for memory and storage): no floating point, so `1500m == 1.5`
//! and `1Gi > 1G` hold exactly. Like Kubernetes, precision finer than a thousandth is rounded up
//! (`1n` is `1m`).
//!
//! Negative quantities are refused: nothing Deskpod measures can be negative, and the CRDs refuse
//! them already.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A non-negative quantity in thousandths of its unit: `Milli(1500)` is `1.5` or `1500m`, and
/// `Milli(1024_000)` is `1Ki` (1024 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub i128);

/// Why a string is not a quantity. The `Display` text quotes the input and says what would be
/// accepted, for messages users read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("an empty string is not a quantity; write a number such as 500m, 2 or 4Gi")]
    Empty,
    #[error("{0:?} is negative; quantities here must be zero or more")]
    Negative(String),
    #[error("{0:?} does not start with a number; write one such as 500m, 2 or 4Gi")]
    NotANumber(String),
    #[error(
        "{input:?} has an unknown suffix {suffix:?}; use Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024), \
         m, k, M, G, T, P, E (powers of 1000) or an exponent such as e3"
    )]
    UnknownSuffix { input: String, suffix: String },
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses a quantity such as `500m`, `2`, `1.5`, `4Gi`, `512Mi`, `1e3` or `10G`.
///
/// The grammar is Kubernetes': a decimal number (`2`, `1.5`, `.5`, `5.`) with an optional `+`,
/// then one binary suffix (`Ki` … `Ei`), one decimal suffix (`n`, `u`, `m`, `k`, `M` … `E`) or a
/// decimal exponent (`e3`, `E-2`).
pub fn parse(input: &str) -> Result<Milli, QuantityError> {
    if input.is_empty() {
        return Err(QuantityError::Empty);
    }
    let unsigned = match input.as_bytes()[0] {
        b'-' => return Err(QuantityError::Negative(input.into())),
        b'+' => &input[1..],
        _ => input,
    };
    let number_len = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(QuantityError::NotANumber(input.into()));
    }
    let too_large = || QuantityError::TooLarge(input.into());
    let mantissa = format!("{whole}{fraction}").parse::<i128>().map_err(|_| too_large())?;
    let (binary_power, decimal_exponent) = suffix_scale(suffix)
        .ok_or_else(|| QuantityError::UnknownSuffix { input: input.into(), suffix: suffix.into() })?;
    // value = mantissa × 10^-len(fraction) × 1024^binary_power × 10^decimal_exponent, in
    // thousandths: multiply by 10^3 as well.
    let scaled = 1024_i128.checked_pow(binary_power).and_then(|b| mantissa.checked_mul(b)).ok_or_else(too_large)?;
    let fraction_digits = i32::try_from(fraction.len()).map_err(|_| too_large())?;
    let exponent =
        decimal_exponent.checked_add(3).and_then(|e| e.checked_sub(fraction_digits)).ok_or_else(too_large)?;
    if exponent >= 0 {
        10_i128
            .checked_pow(exponent.unsigned_abs())
            .and_then(|p| scaled.checked_mul(p))
            .map(Milli)
            .ok_or_else(too_large)
    } else {
        // Finer than a thousandth: round up, as Kubernetes does.
        Ok(Milli(match 10_i128.checked_pow(exponent.unsigned_abs()) {
            Some(divisor) => scaled / divisor + i128::from(scaled % divisor != 0),
            None => i128::from(scaled > 0),
        }))
    }
}

/// Parses a k8s-openapi [`Quantity`].
pub fn parse_quantity(quantity: &Quantity) -> Result<Milli, QuantityError> {
    parse(&quantity.0)
}

/// The scale a suffix stands for: (power of 1024, power of 10). `None` for an unknown suffix.
fn suffix_scale(suffix: &str) -> Option<(u32, i32)> {
    let scale = match suffix {
        "" => (0, 0),
        "Ki" => (1, 0),
        "Mi" => (2, 0),
        "Gi" => (3, 0),
        "Ti" => (4, 0),
        "Pi" => (5, 0),
        "Ei" => (6, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (0, exponent.parse().ok()?)
        }
    };
    Some(scale)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("0", 0)]
    #[case("2", 2_000)]
    #[case("+2", 2_000)]
    #[case("500m", 500)]
    #[case("1.5", 1_500)]
    #[case(".5", 500)]
    #[case("5.", 5_000)]
    #[case("0.1m", 1)] // finer than a thousandth rounds up
    #[case("1n", 1)]
    #[case("250u", 1)]
    #[case("1k", 1_000_000)]
    #[case("10G", 10_000_000_000_000)]
    #[case("1Ki", 1_024_000)]
    #[case("512Mi", 512 * 1024 * 1024 * 1000)]
    #[case("4Gi", 4 * 1024 * 1024 * 1024 * 1000)]
    #[case("1.5Gi", 1536 * 1024 * 1024 * 1000)]
    #[case("2Ei", 2 * (1_i128 << 60) * 1000)]
    #[case("1e3", 1_000_000)]
    #[case("1E3", 1_000_000)]
    #[case("1e+3", 1_000_000)]
    #[case("15e-1", 1_500)]
    #[case("1E", 1_000_000_000_000_000_000_000)] // E alone is exa, not an exponent
    fn parses_valid_quantities_exactly(#[case] input: &str, #[case] milli: i128) {
        assert_eq!(parse(input), Ok(Milli(milli)), "{input}");
    }

    #[rstest]
    #[case("", QuantityError::Empty)]
    #[case("-1", QuantityError::Negative("-1".into()))]
    #[case("-500m", QuantityError::Negative("-500m".into()))]
    #[case("Gi", QuantityError::NotANumber("Gi".into()))]
    #[case(".", QuantityError::NotANumber(".".into()))]
    #[case("1.2.3", QuantityError::NotANumber("1.2.3".into()))]
    #[case("10Gb", QuantityError::UnknownSuffix { input: "10Gb".into(), suffix: "Gb".into() })]
    #[case("10 Gi", QuantityError::UnknownSuffix { input: "10 Gi".into(), suffix: " Gi".into() })]
    #[case("1e", QuantityError::UnknownSuffix { input: "1e".into(), suffix: "e".into() })]
    #[case("1e3.5", QuantityError::UnknownSuffix { input: "1e3.5".into(), suffix: "e3.5".into() })]
    #[case("2gi", QuantityError::UnknownSuffix { input: "2gi".into(), suffix: "gi".into() })]
    #[case("1e400", QuantityError::TooLarge("1e400".into()))]
    #[case("99999999999999999999999999999999999999999", QuantityError::TooLarge("99999999999999999999999999999999999999999".into()))]
    fn refuses_what_is_not_a_quantity(#[case] input: &str, #[case] error: QuantityError) {
        assert_eq!(parse(input), Err(error), "{input}");
    }

    #[test]
    fn error_messages_quote_the_input_and_say_what_works() {
        let message = parse("10Gb").unwrap_err().to_string();
        assert!(message.contains("\"10Gb\""), "{message}");
        assert!(message.contains("\"Gb\"") && message.contains("Gi"), "{message}");
        assert!(parse("-1").unwrap_err().to_string().contains("negative"));
        assert!(parse("").unwrap_err().to_string().contains("500m"));
    }

    #[rstest]
    #[case("1Gi", "1G")] // binary gigabyte is larger than the decimal one
    #[case("1Ki", "1k")]
    #[case("2", "1500m")]
    #[case("8Gi", "8191Mi")]
    #[case("1001m", "1")]
    #[case("1e4", "9999")]
    fn orders_quantities_across_suffixes(#[case] larger: &str, #[case] smaller: &str) {
        assert!(parse(larger).unwrap() > parse(smaller).unwrap(), "{larger} > {smaller}");
    }

    #[rstest]
    #[case("1500m", "1.5")]
    #[case("8Gi", "8192Mi")]
    #[case("1k", "1000")]
    #[case("1e3", "1k")]
    #[case("1M", "1000k")]
    #[case("0.5Ki", "512")]
    fn equal_quantities_written_differently_are_equal(#[case] a: &str, #[case] b: &str) {
        assert_eq!(parse(a).unwrap(), parse(b).unwrap(), "{a} == {b}");
    }

    #[test]
    fn parses_a_k8s_openapi_quantity() {
        assert_eq!(parse_quantity(&Quantity("4Gi".into())), parse("4096Mi"));
    }
}
