//! Kubernetes resource quantities (`64Gi`, `500M`, `1.5Ti`) as byte counts. The API server has
//! validated the syntax; this converts.

/// A quantity that is not a whole number of bytes we can use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a quantity such as 64Gi")]
pub struct QuantityError(pub String);

/// Bytes in a quantity (fractions of a byte are rounded down).
pub fn to_bytes(quantity: &str) -> Result<u64, QuantityError> {
    let q = quantity.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().map_err(|_| QuantityError(quantity.to_owned()))?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return Err(QuantityError(quantity.to_owned())),
    };
    let bytes = value * factor;
    if !bytes.is_finite() || bytes < 0.0 {
        return Err(QuantityError(quantity.to_owned()));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_binary_and_decimal_suffixes() {
        assert_eq!(to_bytes("64Gi"), Ok(64 << 30));
        assert_eq!(to_bytes("500M"), Ok(500_000_000));
        assert_eq!(to_bytes("1.5Ki"), Ok(1536));
        assert_eq!(to_bytes("1024"), Ok(1024));
        assert!(to_bytes("lots").is_err());
        assert!(to_bytes("5GB").is_err());
    }
}
