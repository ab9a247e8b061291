//! Exact decimals: JSON numbers and numeric strings parsed digit for digit
//! and encoded in PostgreSQL's binary `numeric` format, never through f64.

/// A decimal as sign, digits and scale: value = digits × 10^-scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    pub negative: bool,
    /// Decimal digits with no leading zeros ("" for zero).
    pub digits: String,
    /// Digits after the decimal point, as written (`1.50` has scale 2).
    pub scale: u32,
}

impl Decimal {
    /// Parses `-12.340`, `1e3`, `1.5E-2`, `+7`. Rejects anything else
    /// (`NaN`, `Infinity`, blanks, `1,5`).
    pub fn parse(text: &str) -> Option<Decimal> {
        let s = text.trim();
        let (negative, s) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
            None => (s, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut all = format!("{int}{frac}");
        let mut scale = (frac.len() as i64).checked_sub(exp)?;
        if scale < 0 {
            if scale < -200_000 {
                return None;
            }
            all.extend(std::iter::repeat('0').take((-scale) as usize));
            scale = 0;
        }
        if scale > 100_000 {
            return None;
        }
        let digits = all.trim_start_matches('0').to_string();
        Some(Decimal { negative: negative && !digits.is_empty(), digits, scale: scale as u32 })
    }

    /// PostgreSQL `numeric` binary representation (base 10000 digit groups).
    /// `None` when PostgreSQL's `numeric` cannot hold the value (more than
    /// 131072 digits before the point or 16383 after).
    pub fn to_pg_numeric(&self) -> Option<Vec<u8>> {
        if self.scale > 16383 || self.digits.len().saturating_sub(self.scale as usize) > 131_072 {
            return None;
        }
        let scale = self.scale as usize;
        // Split into integer and fraction digit strings.
        let (int, frac) = if self.digits.len() > scale {
            let (i, f) = self.digits.split_at(self.digits.len() - scale);
            (i.to_string(), f.to_string())
        } else {
            (String::new(), format!("{}{}", "0".repeat(scale - self.digits.len()), self.digits))
        };
        let int_pad = (4 - int.len() % 4) % 4;
        let int_full = format!("{}{}", "0".repeat(int_pad), int);
        let frac_pad = (4 - frac.len() % 4) % 4;
        let frac_full = format!("{}{}", frac, "0".repeat(frac_pad));
        let group = |s: &str| -> Vec<i16> { s.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or("0").parse::<i16>().unwrap_or(0)).collect() };
        let int_groups = group(&int_full);
        let frac_groups = group(&frac_full);
        let mut weight = int_groups.len() as i32 - 1;
        let mut groups: Vec<i16> = int_groups.into_iter().chain(frac_groups).collect();
        // Strip leading zero groups (each lowers the weight) and trailing ones.
        let lead = groups.iter().take_while(|g| **g == 0).count();
        groups.drain(..lead);
        weight -= lead as i32;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let sign: u16 = if self.negative && !groups.is_empty() { 0x4000 } else { 0 };
        let mut out = Vec::with_capacity(8 + groups.len() * 2);
        out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
        out.extend_from_slice(&(weight as i16).to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&(self.scale as u16).to_be_bytes());
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(d("98765432109876543.21"), Decimal { negative: false, digits: "9876543210987654321".into(), scale: 2 });
        assert_eq!(d("-0.050"), Decimal { negative: true, digits: "50".into(), scale: 3 });
        assert_eq!(d("1.5e3"), Decimal { negative: false, digits: "1500".into(), scale: 0 });
        assert_eq!(d("15E-3"), Decimal { negative: false, digits: "15".into(), scale: 3 });
        assert_eq!(d("-0"), Decimal { negative: false, digits: "".into(), scale: 0 });
        for bad in ["", "-", ".", "abc", "1,5", "NaN", "1e", "1.2.3", " "] {
            assert!(Decimal::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn encodes_pg_numeric() {
        // 1250000.00 = groups [125, 0] weight 1, dscale 2
        assert_eq!(d("1250000.00").to_pg_numeric().unwrap(), vec![0, 1, 0, 1, 0, 0, 0, 2, 0, 125]);
        // 0.0001 = group [1] weight -1
        assert_eq!(d("0.0001").to_pg_numeric().unwrap(), vec![0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 1]);
        // -512.35 = [512, 3500] weight 0, negative, dscale 2
        assert_eq!(d("-512.35").to_pg_numeric().unwrap(), vec![0, 2, 0, 0, 0x40, 0, 0, 2, 0x02, 0x00, 0x0d, 0xac]);
        assert_eq!(d("0").to_pg_numeric().unwrap(), vec![0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
