//! Quantities with units as scenario authors write them: durations (`"2s"`,
//! `"500ms"`) and frequencies (`"1500MHz"`, `"1.5GHz"`, `"600000kHz"`).
//!
//! Values are parsed as exact decimals (never through `f64`), so `1.4GHz` is
//! exactly 1 400 000 kHz and a value that is not a whole number of the base
//! unit (kHz, ns) is refused instead of rounded. A bare number is refused too:
//! cpufreq speaks kHz while people speak MHz, and guessing would silently be
//! off by a factor of 1000.

use std::time::Duration;

/// A non-negative decimal as `digits / 10^scale`, parsed without rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Decimal {
    digits: u128,
    scale: u32,
}

/// At most this many digits after the point: more precision than any unit here needs,
/// and small enough that `10^scale` and the products below stay inside `u128`.
const MAX_FRACTION_DIGITS: u32 = 12;
/// At most this many digits before the point (keeps `digits * multiplier` inside `u128`).
const MAX_INTEGER_DIGITS: usize = 15;

/// Splits `"1.5 GHz"` into the number and the unit (spaces between them allowed).
fn split_number_unit(text: &str) -> (&str, &str) {
    let text = text.trim();
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(text.len());
    (&text[..end], text[end..].trim_start())
}

fn parse_decimal(number: &str) -> Result<Decimal, String> {
    if number.starts_with('-') {
        return Err("must not be negative".into());
    }
    let number = number.strip_prefix('+').unwrap_or(number);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    let valid = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty()) || !valid(int_part) || !valid(frac_part) {
        return Err("is not a number".into());
    }
    let int_trimmed = int_part.trim_start_matches('0');
    let frac_trimmed = frac_part.trim_end_matches('0');
    if int_trimmed.len() > MAX_INTEGER_DIGITS {
        return Err("is too large".into());
    }
    if frac_trimmed.len() > MAX_FRACTION_DIGITS as usize {
        return Err(format!("has more than {MAX_FRACTION_DIGITS} digits after the decimal point"));
    }
    let mut digits: u128 = 0;
    for b in int_trimmed.bytes().chain(frac_trimmed.bytes()) {
        digits = digits * 10 + u128::from(b - b'0');
    }
    Ok(Decimal { digits, scale: frac_trimmed.len() as u32 })
}

/// `value * multiplier` as a whole number, or an error when it is fractional.
fn scale_exact(value: Decimal, multiplier: u128, base_unit: &str) -> Result<u128, String> {
    let numerator = value.digits.checked_mul(multiplier).ok_or_else(|| "is too large".to_string())?;
    let denominator = 10u128.pow(value.scale);
    if numerator % denominator != 0 {
        return Err(format!("is not a whole number of {base_unit}"));
    }
    Ok(numerator / denominator)
}

/// Parses a duration with a unit: `ns`, `us` (or `µs`), `ms`, `s`, `min`, `h`.
/// Fractions are allowed (`"1.5s"`); the result must be a whole number of nanoseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number_unit(text);
    let nanos_per_unit: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            return Err(if number.is_empty() {
                "is not a duration".into()
            } else {
                "needs a unit (ns, us, ms, s, min or h), e.g. \"500ms\" or \"2s\"".into()
            })
        }
        other => return Err(format!("has an unknown unit {other:?} (use ns, us, ms, s, min or h)")),
    };
    let value = parse_decimal(number)?;
    let nanos = scale_exact(value, nanos_per_unit, "nanoseconds")?;
    let nanos = u64::try_from(nanos).map_err(|_| "is too large".to_string())?;
    Ok(Duration::from_nanos(nanos))
}

/// Parses a frequency with a unit (`Hz`, `kHz`, `MHz`, `GHz`, case-insensitive but for
/// `mHz`, which is millihertz in SI and refused) into kHz, the unit of every cpufreq sysfs
/// file. The result must be a whole number of kHz.
pub fn parse_frequency_khz(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number_unit(text);
    if unit == "mHz" {
        return Err("has the unit mHz, millihertz: write MHz for megahertz".into());
    }
    let hz_per_unit: u128 = match unit.to_ascii_lowercase().as_str() {
        "hz" => 1,
        "khz" => 1_000,
        "mhz" => 1_000_000,
        "ghz" => 1_000_000_000,
        "" => {
            return Err(if number.is_empty() {
                "is not a frequency".into()
            } else {
                "needs a unit (kHz, MHz or GHz), e.g. \"1500MHz\"; cpufreq's own files are in kHz".into()
            })
        }
        _ => return Err(format!("has an unknown unit {unit:?} (use kHz, MHz or GHz)")),
    };
    let value = parse_decimal(number)?;
    let hz = scale_exact(value, hz_per_unit, "Hz")?;
    if hz % 1000 != 0 {
        return Err("is not a whole number of kHz".into());
    }
    u64::try_from(hz / 1000).map_err(|_| "is too large".to_string())
}

/// `1500000` kHz -> `"1500 MHz"`, `600500` -> `"600.5 MHz"`: how levels are printed everywhere.
pub fn format_khz(khz: u64) -> String {
    if khz.is_multiple_of(1000) {
        format!("{} MHz", khz / 1000)
    } else {
        let mhz = format!("{}.{:03}", khz / 1000, khz % 1000);
        format!("{} MHz", mhz.trim_end_matches('0'))
    }
}

/// A duration as a person reads it: `"250ms"`, `"2s"`, `"1.5s"`, `"4m 05s"`, `"1h 02m 03s"`.
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms < 1000 {
        if d.as_nanos().is_multiple_of(1_000_000) {
            return format!("{total_ms}ms");
        }
        return format!("{}us", d.as_micros());
    }
    let secs = d.as_secs();
    if secs < 60 {
        let ms = d.subsec_millis();
        return if ms == 0 {
            format!("{secs}s")
        } else {
            format!("{}s", format!("{secs}.{ms:03}").trim_end_matches('0'))
        };
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else {
        format!("{m}m {s:02}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_exactly() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2 min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("-2s").unwrap_err().contains("negative"));
        assert!(parse_duration("2").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("2 weeks").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("1.5ns").unwrap_err().contains("whole number"));
        assert!(parse_duration("99999999999999999999s").unwrap_err().contains("too large"));
        assert!(parse_duration("1e3s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1..2s").is_err());
    }

    #[test]
    fn frequencies_convert_to_khz() {
        assert_eq!(parse_frequency_khz("1500MHz"), Ok(1_500_000));
        assert_eq!(parse_frequency_khz("1.5GHz"), Ok(1_500_000));
        assert_eq!(parse_frequency_khz("1.4 GHz"), Ok(1_400_000));
        assert_eq!(parse_frequency_khz("600000kHz"), Ok(600_000));
        assert_eq!(parse_frequency_khz("600000khz"), Ok(600_000));
        assert_eq!(parse_frequency_khz("1200000000Hz"), Ok(1_200_000));
        assert_eq!(parse_frequency_khz("0.6GHz"), Ok(600_000));
    }

    #[test]
    fn bad_frequencies_say_why() {
        assert!(parse_frequency_khz("1500").unwrap_err().contains("needs a unit"));
        assert!(parse_frequency_khz("1500 rpm").unwrap_err().contains("unknown unit"));
        assert!(parse_frequency_khz("1500500Hz").unwrap_err().contains("whole number of kHz"));
        assert!(parse_frequency_khz("-1GHz").unwrap_err().contains("negative"));
        assert!(parse_frequency_khz("1.0000000000001GHz").is_err());
    }

    #[test]
    fn formatting_is_readable() {
        assert_eq!(format_khz(1_500_000), "1500 MHz");
        assert_eq!(format_khz(600_500), "600.5 MHz");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(format_duration(Duration::from_secs(3723)), "1h 02m 03s");
    }

    #[test]
    fn millihertz_is_refused_and_other_cases_of_megahertz_are_read() {
        let err = parse_frequency_khz("1500mHz").unwrap_err();
        assert!(err.contains("millihertz") && err.contains("MHz"), "{err}");
        for ok in ["1500MHz", "1500 Mhz", "1500mhz", "1.5GHz"] {
            assert_eq!(parse_frequency_khz(ok), Ok(1_500_000), "{ok}");
        }
    }
}
