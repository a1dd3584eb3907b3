//! Sizes and durations as users write them on the command line (`512M`,
//! `4G`, `500ms`, `2s`) and as we print them.

use std::time::Duration;

/// Parses a byte size: a number with an optional binary unit (`K`, `M`, `G`,
/// `T`, each optionally followed by `i`, `B` or `iB`; case-insensitive).
/// Fractions are allowed with a unit: `1.5G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kb" | "kib" => 10,
        "m" | "mi" | "mb" | "mib" => 20,
        "g" | "gi" | "gb" | "gib" => 30,
        "t" | "ti" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {unit:?} (use K, M, G or T, e.g. 512M)"
            ))
        }
    };
    let bad = || {
        format!("invalid size {text:?}: expected a number with an optional unit, e.g. 512M or 4G")
    };
    let bytes = if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = value * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("invalid size {text:?}: too large"));
        }
        bytes.round() as u64
    } else {
        let value: u64 = number.parse().map_err(|_| bad())?;
        value
            .checked_mul(1u64 << shift)
            .ok_or_else(|| format!("invalid size {text:?}: too large"))?
    };
    Ok(bytes)
}

/// Formats bytes for people: `0 B`, `512 MiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() < 0.05 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a duration with a unit: `250ms`, `1s`, `1.5s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 1s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "" => {
            return Err(format!(
                "invalid duration {text:?}: add a unit (ms, s or m)"
            ))
        }
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use ms, s or m)"
            ))
        }
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
        return Err(format!("invalid duration {text:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Formats a duration as `120ms` or `2.5s`, as accepted by [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
    }

    #[test]
    fn bad_sizes_name_the_input() {
        for bad in ["", "M", "12X", "1.2.3G", "99999999999T", "-1"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn sizes_format_readably() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(1000), "1000 B");
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").unwrap_err().contains("add a unit"));
        assert!(parse_duration("0s").is_err());
        assert_eq!(
            parse_duration(&format_duration(Duration::from_millis(1500))),
            Ok(Duration::from_millis(1500))
        );
    }
}
