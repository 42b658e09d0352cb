//! Token amounts on the wire: base units (10⁻¹⁸ BDC) as a decimal string, because a JSON number
//! loses precision past 2⁵³ and a deal's escrow is routinely 10²⁰ base units.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{ObjectBuilder, RefOr, Schema, Type},
};

/// BDC has 18 decimals.
pub const BASE_UNITS_PER_BDC: u128 = 1_000_000_000_000_000_000;

/// An amount of BDC in base units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub u128);

/// A string that is not a decimal amount of base units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an amount of token base units (a decimal integer below 2^128)")]
pub struct AmountError {
    pub text: String,
}

impl Amount {
    pub const ZERO: Self = Self(0);

    /// The amount in BDC (for display; rounding is fine there, never for money).
    pub fn bdc(self) -> f64 {
        self.0 as f64 / BASE_UNITS_PER_BDC as f64
    }

    /// Exact decimal BDC, trailing zeros dropped: `12.5 BDC`, `0.000000001 BDC`.
    pub fn to_bdc_string(self) -> String {
        let (whole, frac) = (self.0 / BASE_UNITS_PER_BDC, self.0 % BASE_UNITS_PER_BDC);
        if frac == 0 {
            return format!("{whole} BDC");
        }
        let frac = format!("{frac:018}");
        format!("{whole}.{} BDC", frac.trim_end_matches('0'))
    }
}

impl From<u128> for Amount {
    fn from(v: u128) -> Self {
        Self(v)
    }
}

impl From<Amount> for u128 {
    fn from(a: Amount) -> Self {
        a.0
    }
}

impl fmt::Display for Amount {
    /// Base units, decimal (what the wire carries).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError { text: s.to_string() });
        }
        s.parse::<u128>().map(Self).map_err(|_| AmountError { text: s.to_string() })
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl PartialSchema for Amount {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9]{1,39}$"))
            .description(Some("Token base units (10^-18 BDC), decimal"))
            .examples(["1000000000000000000"])
            .into()
    }
}

impl ToSchema for Amount {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_decimal_strings_both_ways() {
        let a = Amount(99_999_023_037_963_261_130);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"99999023037963261130\"");
        assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), a);
        for bad in ["\"\"", "\"-1\"", "\"1e18\"", "\"0x10\"", "\"340282366920938463463374607431768211456\"", "12"] {
            assert!(serde_json::from_str::<Amount>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bdc_strings_are_exact() {
        assert_eq!(Amount(99_999_023_037_963_261_130).to_bdc_string(), "99.99902303796326113 BDC");
        assert_eq!(Amount(5 * BASE_UNITS_PER_BDC).to_bdc_string(), "5 BDC");
        assert_eq!(Amount(1).to_bdc_string(), "0.000000000000000001 BDC");
        assert_eq!(Amount(0).to_bdc_string(), "0 BDC");
    }
}
