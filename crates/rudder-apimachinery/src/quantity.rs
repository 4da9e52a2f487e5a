//! Resource quantities (`500m`, `1.5Gi`, `2e3`), as `resource.Quantity`
//! parses them.

/// A parsed quantity, kept as a decimal value.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Quantity(f64);

impl Quantity {
    /// Parses the Kubernetes quantity syntax: a signed decimal number, then
    /// an optional binary (`Ki` … `Ei`), decimal (`n u m k M G T P E`) or
    /// exponent (`e3`, `E-2`) suffix.
    pub fn parse(text: &str) -> Option<Quantity> {
        let text = text.trim();
        let split = text
            .char_indices()
            .find(|(i, c)| {
                !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0))
            })
            .map_or(text.len(), |(i, _)| i);
        let (number, suffix) = text.split_at(split);
        if number.is_empty() || number == "+" || number == "-" || number.matches('.').count() > 1 {
            return None;
        }
        let digits = number.trim_start_matches(['+', '-']);
        if digits == "." || digits.is_empty() {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let multiplier = match suffix {
            "" => 1.0,
            "n" => 1e-9,
            "u" => 1e-6,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            exp if exp.starts_with(['e', 'E']) => {
                let power: i32 = exp[1..].parse().ok()?;
                10f64.powi(power)
            }
            _ => return None,
        };
        Some(Quantity(value * multiplier))
    }

    pub fn as_f64(self) -> f64 {
        self.0
    }

    /// The value in thousandths, rounded up (CPU in millicores).
    pub fn milli_value(self) -> i64 {
        (self.0 * 1000.0).ceil() as i64
    }

    /// The value rounded up to a whole number (bytes of memory).
    pub fn value(self) -> i64 {
        self.0.ceil() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::Quantity;

    #[test]
    fn parses_every_suffix_family() {
        assert_eq!(Quantity::parse("500m").unwrap().milli_value(), 500);
        assert_eq!(Quantity::parse("2").unwrap().milli_value(), 2000);
        assert_eq!(Quantity::parse("1.5").unwrap().milli_value(), 1500);
        assert_eq!(Quantity::parse("1Gi").unwrap().value(), 1 << 30);
        assert_eq!(Quantity::parse("128Mi").unwrap().value(), 128 << 20);
        assert_eq!(Quantity::parse("1k").unwrap().value(), 1000);
        assert_eq!(Quantity::parse("2e3").unwrap().value(), 2000);
        assert_eq!(Quantity::parse("-1").unwrap().value(), -1);
        assert!(Quantity::parse("1Gi").unwrap() > Quantity::parse("1G").unwrap());
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in ["", "lots", "1.2.3", "1Qi", "m", ".", "1 Gi", "+"] {
            assert!(Quantity::parse(bad).is_none(), "{bad:?}");
        }
    }
}
