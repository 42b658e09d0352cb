//! Values as a person reads them: sizes in KiB/MiB/GiB, unix times as UTC dates, amounts in BDC.
//! The market's pages and the CLI's human output use these; JSON keeps the exact values.

use std::time::{Duration, UNIX_EPOCH};

use crate::Amount;

/// `1.5 GiB`, `4 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    let s = bytesize::ByteSize::b(n).display().iec().to_string();
    // bytesize prints one decimal: `4.0 MiB` reads better as `4 MiB`
    s.replacen(".0 ", " ", 1)
}

/// `2026-12-07 16:36:15 UTC`; `—` for 0 (unknown).
pub fn date(unix_secs: u64) -> String {
    if unix_secs == 0 {
        return "—".to_string();
    }
    // RFC 3339 stops at 9999-12-31 23:59:59 (and the formatter panics past it): a chain's or a
    // peer's absurd time shows as the number it is
    const LAST_RFC3339: u64 = 253_402_300_799;
    if unix_secs > LAST_RFC3339 {
        return format!("{unix_secs} (unix seconds)");
    }
    let t = UNIX_EPOCH + Duration::from_secs(unix_secs);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", s.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `2026-12-07`.
pub fn day(unix_secs: u64) -> String {
    date(unix_secs).split(' ').next().unwrap_or_default().to_string()
}

/// An amount in BDC with at most `decimals` decimals (rounded down, so a page never shows more
/// than is there), trailing zeros dropped: `99.999023 BDC`; a non-zero amount below the last
/// decimal shows as `< 0.000001 BDC`.
pub fn bdc(a: Amount, decimals: u32) -> String {
    let decimals = decimals.min(18);
    let unit = 10u128.pow(18 - decimals);
    let shown = Amount(a.0 / unit * unit);
    if shown.0 == 0 && a.0 > 0 {
        return format!("< 0.{}1 BDC", "0".repeat(decimals.saturating_sub(1) as usize));
    }
    shown.to_bdc_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_at_a_glance() {
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4 << 20), "4 MiB");
        assert_eq!(date(1_796_661_375), "2026-12-07 16:36:15 UTC");
        assert_eq!(day(1_796_661_375), "2026-12-07");
        assert_eq!(date(0), "—");
        // the last second RFC 3339 can write, and past it (the formatter would panic)
        assert_eq!(date(253_402_300_799), "9999-12-31 23:59:59 UTC");
        assert_eq!(date(253_402_300_800), "253402300800 (unix seconds)");
        assert_eq!(date(u64::MAX), format!("{} (unix seconds)", u64::MAX));
        assert_eq!(day(u64::MAX), u64::MAX.to_string());
        assert_eq!(bdc(Amount(99_999_023_037_963_261_130), 6), "99.999023 BDC");
        assert_eq!(bdc(Amount(10u128.pow(18)), 6), "1 BDC");
        assert_eq!(bdc(Amount(5), 6), "< 0.000001 BDC");
        assert_eq!(bdc(Amount(0), 6), "0 BDC");
    }
}
