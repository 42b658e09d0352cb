//! Human sizes and durations for flags and the config file: `--window 4MiB`, `--stall-timeout
//! 30s`, `window = "4 MiB"` (a plain integer is bytes, or seconds).

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer};

/// A size in bytes: `4MiB`, `512 KiB`, `1GB` (SI), or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// A size that is not one (the parser's own words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (e.g. 4MiB, 512KiB, 1GB, or a number of bytes)")]
pub struct SizeError(String);

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse::<bytesize::ByteSize>().map(|b| Self(b.as_u64())).map_err(SizeError)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bdc_market_api::human::bytes(self.0))
    }
}

/// A duration: `30s`, `5m`, `1h 30m`, or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

/// A duration that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (e.g. 30s, 5m, 1h 30m, or a number of seconds)")]
pub struct SpanError(String);

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Self(Duration::from_secs(secs)));
        }
        humantime::parse_duration(s).map(Self).map_err(|e| SpanError(e.to_string()))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// A byte range `START..END` (END exclusive), each a size: `0..1MiB`, `4096..8192`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteRange(pub std::ops::Range<u64>);

/// A range that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteRangeError {
    #[error("expected START..END (e.g. 0..1MiB), got {0:?}")]
    Shape(String),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("{0}..{1} is empty: END must be above START")]
    Empty(u64, u64),
}

impl FromStr for ByteRange {
    type Err = ByteRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once("..").ok_or_else(|| ByteRangeError::Shape(s.to_string()))?;
        let (start, end) = (a.parse::<Size>()?.0, b.parse::<Size>()?.0);
        if end <= start {
            return Err(ByteRangeError::Empty(start, end));
        }
        Ok(Self(start..end))
    }
}

/// A config-file value: a string in the flag's syntax, or a plain integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(Duration::from_secs(n))),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!("4MiB".parse::<Size>().unwrap(), Size(4 << 20));
        assert_eq!("4 MiB".parse::<Size>().unwrap(), Size(4 << 20));
        assert_eq!("1GB".parse::<Size>().unwrap(), Size(1_000_000_000));
        assert_eq!("4194304".parse::<Size>().unwrap(), Size(4 << 20));
        assert!("four".parse::<Size>().unwrap_err().to_string().contains("e.g. 4MiB"));
        assert_eq!("30s".parse::<Span>().unwrap(), Span(Duration::from_secs(30)));
        assert_eq!("1h 30m".parse::<Span>().unwrap(), Span(Duration::from_secs(5400)));
        assert_eq!("300".parse::<Span>().unwrap(), Span(Duration::from_secs(300)));
        assert!("soon".parse::<Span>().is_err());
        assert_eq!(Size(4 << 20).to_string(), "4 MiB");
        assert_eq!(Span(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!("0..1MiB".parse::<ByteRange>().unwrap(), ByteRange(0..1 << 20));
        assert_eq!("4096..8192".parse::<ByteRange>().unwrap(), ByteRange(4096..8192));
        assert!(matches!("5..5".parse::<ByteRange>(), Err(ByteRangeError::Empty(5, 5))));
        assert!(matches!("100".parse::<ByteRange>(), Err(ByteRangeError::Shape(_))));
        assert!(matches!("x..1".parse::<ByteRange>(), Err(ByteRangeError::Size(_))));
    }
}
