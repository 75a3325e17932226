//! Exact money: USD as integer micro-dollars, decimal amounts parsed from
//! their text (never through `f64`), and exact conversion with rounding.
//!
//! A request's amount is `value / divide_by` in its currency, times the USD
//! rate. All three are exact decimals here (`divide_by` and rates come from
//! the policy as `f64`; they are read back as their shortest decimal form,
//! which is what the policy file said), so `"1999"` cents / 100 is exactly
//! 19.99 USD and `1999 * 1.08 / 100` is exactly 21.5892 USD.

use std::fmt;

/// Micro-dollars per dollar.
pub const MICROS_PER_USD: i64 = 1_000_000;

/// The largest amount accepted anywhere (caps, costs, spend): 10^12 USD.
/// Anything above is refused as absurd rather than risk overflow.
pub const MAX_MICROS: i64 = 1_000_000_000_000 * MICROS_PER_USD;

/// Longest amount text accepted (after trimming whitespace).
const MAX_TEXT: usize = 64;

/// Most significant digits accepted in an amount (a micro-dollar over
/// 10^12 USD needs 18).
const MAX_DIGITS: usize = 20;

/// Largest decimal exponent accepted (`1e-1000` and `1e1000` are refused).
const MAX_EXPONENT: i32 = 1000;

/// Why an amount is not accepted. The caller names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountError {
    Empty,
    Negative,
    NotANumber,
    TooLong,
    TooManyDigits,
    OutOfRange,
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "it is empty",
            Self::Negative => "it is negative",
            Self::NotANumber => "it is not a decimal number",
            Self::TooLong => "it is longer than 64 characters",
            Self::TooManyDigits => "it has more than 20 significant digits",
            Self::OutOfRange => {
                "it is out of range (at most 1000000000000 USD, exponents within ±1000)"
            }
        })
    }
}

/// A non-negative decimal `mantissa * 10^exponent`, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    mantissa: u128,
    exponent: i32,
}

impl Decimal {
    pub const ZERO: Self = Self {
        mantissa: 0,
        exponent: 0,
    };
    pub const ONE: Self = Self {
        mantissa: 1,
        exponent: 0,
    };

    /// Parses `123`, `19.99`, `.5`, `1.`, `+7`, `1.5e3`, `2E-2` (surrounding
    /// ASCII whitespace ignored). Refuses signs other than `+` (negative
    /// amounts), `NaN`, `inf`, hex, thousands separators, more than 64
    /// characters, more than 20 significant digits and exponents beyond
    /// ±1000.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if t.is_empty() {
            return Err(AmountError::Empty);
        }
        if t.len() > MAX_TEXT {
            return Err(AmountError::TooLong);
        }
        let b = t.as_bytes();
        let mut i = 0;
        match b.first() {
            Some(b'-') => {
                return Err(if b.len() > 1 && b[1..].iter().any(u8::is_ascii_digit) {
                    AmountError::Negative
                } else {
                    AmountError::NotANumber
                });
            }
            Some(b'+') => i = 1,
            _ => {}
        }
        let mut digits: Vec<u8> = Vec::with_capacity(b.len());
        let mut frac_len: i32 = 0;
        let mut seen_dot = false;
        while let Some(&c) = b.get(i) {
            match c {
                b'0'..=b'9' => {
                    digits.push(c - b'0');
                    if seen_dot {
                        frac_len += 1;
                    }
                }
                b'.' if !seen_dot => seen_dot = true,
                _ => break,
            }
            i += 1;
        }
        if digits.is_empty() {
            return Err(AmountError::NotANumber);
        }
        let mut exp: i32 = 0;
        if let Some(&(b'e' | b'E')) = b.get(i) {
            i += 1;
            let negative = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            while let Some(&c) = b.get(i) {
                if !c.is_ascii_digit() {
                    break;
                }
                // Saturate: anything past MAX_EXPONENT is refused below.
                exp = exp.saturating_mul(10).saturating_add(i32::from(c - b'0'));
                exp = exp.min(10 * MAX_EXPONENT);
                i += 1;
            }
            if i == start {
                return Err(AmountError::NotANumber);
            }
            if negative {
                exp = -exp;
            }
        }
        if i != b.len() {
            return Err(AmountError::NotANumber);
        }
        Self::from_digits(&digits, exp - frac_len)
    }

    /// `digits * 10^exp` with leading and trailing zeros normalized away.
    fn from_digits(digits: &[u8], mut exp: i32) -> Result<Self, AmountError> {
        let start = digits.iter().position(|&d| d != 0);
        let Some(start) = start else {
            return Ok(Self::ZERO);
        };
        let mut sig = &digits[start..];
        while let [rest @ .., 0] = sig {
            sig = rest;
            exp += 1;
        }
        if sig.len() > MAX_DIGITS {
            return Err(AmountError::TooManyDigits);
        }
        // The value's magnitude is 10^(exp + len - 1); bound the exponent.
        if exp.abs() > MAX_EXPONENT {
            return Err(AmountError::OutOfRange);
        }
        let mantissa = sig.iter().fold(0u128, |m, &d| m * 10 + u128::from(d));
        Ok(Self {
            mantissa,
            exponent: exp,
        })
    }

    /// The exact decimal a policy number was written as: an `f64` read back
    /// in its shortest round-trip form (`0.1` is 0.1, not
    /// 0.1000000000000000055...). Refuses NaN, infinities and negatives.
    pub fn from_f64(value: f64) -> Result<Self, AmountError> {
        if value.is_nan() || value.is_infinite() {
            return Err(AmountError::NotANumber);
        }
        if value < 0.0 {
            return Err(AmountError::Negative);
        }
        Self::parse(&format!("{value:e}"))
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }
}

impl fmt::Display for Decimal {
    /// Plain decimal notation (`19.99`, `1500`, `0.001`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.to_string();
        if self.exponent >= 0 {
            if self.mantissa == 0 {
                return f.write_str("0");
            }
            let zeros = usize::try_from(self.exponent).unwrap_or(0);
            return write!(f, "{digits}{}", "0".repeat(zeros));
        }
        let frac = usize::try_from(-i64::from(self.exponent)).unwrap_or(0);
        if digits.len() > frac {
            let (int, fr) = digits.split_at(digits.len() - frac);
            write!(f, "{int}.{fr}")
        } else {
            write!(f, "0.{}{digits}", "0".repeat(frac - digits.len()))
        }
    }
}

/// Which way a conversion rounds to the micro-dollar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Costs and reservations: never under-count.
    Up,
    /// Caps: never allow more than the policy said.
    Down,
}

/// `amount * rate / divide_by` USD in micro-dollars, exact, rounded as
/// asked. Refuses a zero divisor and results above [`MAX_MICROS`].
pub fn to_micros(
    amount: Decimal,
    divide_by: Decimal,
    rate: Decimal,
    round: Round,
) -> Result<i64, AmountError> {
    if divide_by.is_zero() {
        return Err(AmountError::OutOfRange);
    }
    // An amount has at most 20 significant digits and a rate (an f64) at
    // most 17, so the product fits in u128 (< 10^37 < 3.4e38).
    let Some(num) = amount.mantissa.checked_mul(rate.mantissa) else {
        return Err(AmountError::OutOfRange);
    };
    if num == 0 {
        return Ok(0);
    }
    let den = divide_by.mantissa;
    // value = num / den * 10^k micro-dollars.
    let k =
        i64::from(amount.exponent) + i64::from(rate.exponent) - i64::from(divide_by.exponent) + 6;
    let (num, den) = if k >= 0 {
        match pow10(k).and_then(|p| num.checked_mul(p)) {
            // num * 10^k overflowed u128 (> 3.4e38) while den < 10^20, so
            // the result is above 3.4e18 > MAX_MICROS.
            None => return Err(AmountError::OutOfRange),
            Some(n) => (n, den),
        }
    } else {
        match pow10(-k).and_then(|p| den.checked_mul(p)) {
            // den * 10^-k overflowed: den > 3.4e38 > num, so 0 < result < 1.
            None => {
                return Ok(match round {
                    Round::Up => 1,
                    Round::Down => 0,
                });
            }
            Some(d) => (num, d),
        }
    };
    let mut q = num / den;
    if round == Round::Up && num % den != 0 {
        q += 1;
    }
    match i64::try_from(q) {
        Ok(v) if v <= MAX_MICROS => Ok(v),
        _ => Err(AmountError::OutOfRange),
    }
}

/// A USD amount from the policy (`spend_cap_usd`, `fixed_usd`) in
/// micro-dollars.
pub fn usd_to_micros(usd: f64, round: Round) -> Result<i64, AmountError> {
    to_micros(Decimal::from_f64(usd)?, Decimal::ONE, Decimal::ONE, round)
}

fn pow10(k: i64) -> Option<u128> {
    10u128.checked_pow(u32::try_from(k).ok()?)
}

/// `500.00`, `19.99`, `21.5892`, `0.000001`: dollars with at least two
/// decimals and as many more as the micro-dollars need.
pub fn format_usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let per = MICROS_PER_USD.unsigned_abs();
    let (whole, frac) = (m / per, m % per);
    let mut frac = format!("{frac:06}");
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{sign}{whole}.{frac}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn usd(amount: &str, divide_by: f64, rate: f64) -> Result<i64, AmountError> {
        to_micros(
            Decimal::parse(amount)?,
            Decimal::from_f64(divide_by)?,
            Decimal::from_f64(rate)?,
            Round::Up,
        )
    }

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(d("1999").to_string(), "1999");
        assert_eq!(d("19.99").to_string(), "19.99");
        assert_eq!(d(" 0019.9900 ").to_string(), "19.99");
        assert_eq!(d(".5").to_string(), "0.5");
        assert_eq!(d("1.").to_string(), "1");
        assert_eq!(d("+7").to_string(), "7");
        assert_eq!(d("1.5e3").to_string(), "1500");
        assert_eq!(d("2E-2").to_string(), "0.02");
        assert_eq!(d("0").to_string(), "0");
        assert_eq!(d("0.000").to_string(), "0");
        assert_eq!(d("1e-7").to_string(), "0.0000001");
        // Trailing zeros do not count as significant digits.
        assert_eq!(
            d("100000000000000000000000").to_string(),
            "100000000000000000000000"
        );
    }

    #[test]
    fn refuses_garbage() {
        for (text, want) in [
            ("", AmountError::Empty),
            ("   ", AmountError::Empty),
            ("-5", AmountError::Negative),
            ("-0.01", AmountError::Negative),
            ("-", AmountError::NotANumber),
            ("NaN", AmountError::NotANumber),
            ("nan", AmountError::NotANumber),
            ("inf", AmountError::NotANumber),
            ("Infinity", AmountError::NotANumber),
            ("0x10", AmountError::NotANumber),
            ("1,000", AmountError::NotANumber),
            ("1_000", AmountError::NotANumber),
            ("1999abc", AmountError::NotANumber),
            ("1.2.3", AmountError::NotANumber),
            (".", AmountError::NotANumber),
            ("1e", AmountError::NotANumber),
            ("1e+", AmountError::NotANumber),
            ("e5", AmountError::NotANumber),
            ("++1", AmountError::NotANumber),
            ("1 000", AmountError::NotANumber),
            ("١٢", AmountError::NotANumber),
            ("123456789012345678901", AmountError::TooManyDigits),
            (
                "0.1000000000000000055511151231257827",
                AmountError::TooManyDigits,
            ),
            ("1e1001", AmountError::OutOfRange),
            ("1e-1001", AmountError::OutOfRange),
            ("1e99999999999999999999", AmountError::OutOfRange),
        ] {
            assert_eq!(Decimal::parse(text), Err(want), "{text:?}");
        }
        assert_eq!(Decimal::parse(&"1".repeat(65)), Err(AmountError::TooLong));
    }

    #[test]
    fn f64_policy_values_read_as_written() {
        assert_eq!(Decimal::from_f64(100.0).unwrap().to_string(), "100");
        assert_eq!(Decimal::from_f64(0.1).unwrap().to_string(), "0.1");
        assert_eq!(Decimal::from_f64(1.08).unwrap().to_string(), "1.08");
        assert_eq!(Decimal::from_f64(1e-7).unwrap().to_string(), "0.0000001");
        assert_eq!(Decimal::from_f64(f64::NAN), Err(AmountError::NotANumber));
        assert_eq!(
            Decimal::from_f64(f64::INFINITY),
            Err(AmountError::NotANumber)
        );
        assert_eq!(Decimal::from_f64(-1.0), Err(AmountError::Negative));
        // Extremes do not panic.
        assert!(Decimal::from_f64(f64::MAX).is_ok());
        assert!(Decimal::from_f64(f64::MIN_POSITIVE).is_ok());
        assert!(Decimal::from_f64(5e-324).is_ok());
    }

    #[test]
    fn exact_arithmetic() {
        // Stripe cents.
        assert_eq!(usd("1999", 100.0, 1.0), Ok(19_990_000));
        assert_eq!(usd("1", 100.0, 1.0), Ok(10_000));
        // 1999 * 1.08 / 100 = 21.5892 exactly (f64 would give 21.589199999...).
        assert_eq!(usd("1999", 100.0, 1.08), Ok(21_589_200));
        // 0.1 + 0.2 style values stay exact.
        assert_eq!(usd("0.3", 1.0, 1.0), Ok(300_000));
        assert_eq!(usd("30", 100.0, 1.0), Ok(300_000));
        // Rounding up to the micro-dollar, never down.
        assert_eq!(usd("1", 3.0, 1.0), Ok(333_334));
        assert_eq!(usd("0.0000001", 1.0, 1.0), Ok(1));
        assert_eq!(usd("1", 1e30, 1.0), Ok(1));
        assert_eq!(usd("1", 1e300, 1.0), Ok(1));
        assert_eq!(usd("0", 100.0, 1.27), Ok(0));
        // Zero-decimal style: a rate per unit.
        assert_eq!(usd("1000", 1.0, 0.0067), Ok(6_700_000));
        // Exponents.
        assert_eq!(usd("1.5e3", 100.0, 1.0), Ok(15_000_000));
        // Bounds: 10^12 USD is accepted, a micro-dollar more is not.
        assert_eq!(usd("1000000000000", 1.0, 1.0), Ok(MAX_MICROS));
        assert_eq!(
            usd("1000000000000.000001", 1.0, 1.0),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(usd("1e13", 1.0, 1.0), Err(AmountError::OutOfRange));
        assert_eq!(
            usd("99999999999999999999", 1.0, 1e300),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(usd("1e1000", 1e-300, 1.0), Err(AmountError::OutOfRange));
        assert_eq!(
            to_micros(d("1"), Decimal::ZERO, Decimal::ONE, Round::Up),
            Err(AmountError::OutOfRange)
        );
    }

    #[test]
    fn caps_round_down() {
        assert_eq!(usd_to_micros(500.0, Round::Down), Ok(500_000_000));
        assert_eq!(usd_to_micros(0.0000015, Round::Down), Ok(1));
        assert_eq!(usd_to_micros(0.0000015, Round::Up), Ok(2));
        assert_eq!(usd_to_micros(0.02, Round::Up), Ok(20_000));
        assert_eq!(
            usd_to_micros(1e13, Round::Down),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(
            usd_to_micros(f64::NAN, Round::Down),
            Err(AmountError::NotANumber)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            if let Ok(v) = Decimal::parse(&s) {
                // What parses prints back to the same value.
                prop_assert_eq!(Decimal::parse(&v.to_string()), Ok(v));
            }
        }

        #[test]
        fn numeric_text_never_panics(s in "[-+0-9.eE ]{0,70}") {
            if let Ok(v) = Decimal::parse(&s) {
                let _ = to_micros(v, Decimal::ONE, Decimal::ONE, Round::Up);
            }
        }

        #[test]
        fn cents_are_exact(cents in 0u64..=100_000_000_000_000u64) {
            let want = i64::try_from(cents).unwrap() * 10_000;
            prop_assert_eq!(usd(&cents.to_string(), 100.0, 1.0), Ok(want));
        }

        #[test]
        fn dollars_and_micros_are_exact(int in 0i64..1_000_000_000_000, frac in 0i64..1_000_000) {
            let text = format!("{int}.{frac:06}");
            prop_assert_eq!(usd(&text, 1.0, 1.0), Ok(int * 1_000_000 + frac));
        }

        #[test]
        fn rounding_up_is_tight(n in 0u64..10_000_000_000, d in 1u32..100_000) {
            let exact = (u128::from(n) * 1_000_000).div_ceil(u128::from(d));
            let got = usd(&n.to_string(), f64::from(d), 1.0).map(|m| u128::try_from(m).unwrap());
            prop_assert_eq!(got, Ok(exact));
        }
    }

    #[test]
    fn formats_usd() {
        assert_eq!(format_usd(500_000_000), "500.00");
        assert_eq!(format_usd(19_990_000), "19.99");
        assert_eq!(format_usd(21_589_200), "21.5892");
        assert_eq!(format_usd(1), "0.000001");
        assert_eq!(format_usd(0), "0.00");
        assert_eq!(format_usd(-1_500_000), "-1.50");
        assert_eq!(format_usd(i64::MIN), "-9223372036854.775808");
    }
}
