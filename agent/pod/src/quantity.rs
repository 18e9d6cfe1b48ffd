//! Kubernetes resource quantities: CPU (`500m`, `1.5`, `2`), memory
//! (`64Mi`, `1G`, `1048576`) and herd's I/O rates (`10Mi`, `2k`).

/// A quantity that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a valid {kind} quantity ({hint})")]
pub struct BadQuantity {
    /// the text
    pub value: String,
    /// cpu or memory
    pub kind: &'static str,
    /// what would be
    pub hint: &'static str,
}

/// CPU in millicores.
pub fn cpu_millis(s: &str) -> Result<u64, BadQuantity> {
    let bad = || BadQuantity {
        value: s.into(),
        kind: "cpu",
        hint: "e.g. 500m, 0.5 or 2",
    };
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<u64>().ok().filter(|&v| v > 0).ok_or_else(bad);
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 3 {
        return Err(bad());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().map_err(|_| bad())?
    };
    let v = int
        .checked_mul(1000)
        .and_then(|i| i.checked_add(frac))
        .ok_or_else(bad)?;
    if v == 0 {
        return Err(bad());
    }
    Ok(v)
}

/// Memory in bytes.
pub fn memory_bytes(s: &str) -> Result<u64, BadQuantity> {
    scaled(s, "memory", "e.g. 64Mi, 1Gi, 500M or a number of bytes")
}

/// An I/O rate: bytes or operations per second (`10Mi`, `500`, `2k`).
pub fn io_rate(s: &str) -> Result<u64, BadQuantity> {
    scaled(s, "io", "e.g. 10Mi (per second), 2k or 500")
}

/// A positive whole number with an optional binary or decimal suffix.
fn scaled(s: &str, kind: &'static str, hint: &'static str) -> Result<u64, BadQuantity> {
    let bad = || BadQuantity {
        value: s.into(),
        kind,
        hint,
    };
    const UNITS: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("", 1),
    ];
    let (num, mul) = UNITS
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))
        .ok_or_else(bad)?;
    let n: u64 = num.parse().map_err(|_| bad())?;
    match n.checked_mul(mul) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("1.25"), Ok(1250));
        for bad in ["", "0", "m", "1.2345", "-1", "two", "0m"] {
            assert!(cpu_millis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory() {
        assert_eq!(memory_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("4096"), Ok(4096));
        for bad in ["", "0", "Mi", "1.5Gi", "-1", "10Xi"] {
            assert!(memory_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn io() {
        assert_eq!(io_rate("10Mi"), Ok(10 << 20));
        assert_eq!(io_rate("2k"), Ok(2000));
        assert_eq!(io_rate("500"), Ok(500));
        let e = io_rate("fast").unwrap_err();
        assert_eq!(e.kind, "io");
        assert!(
            e.to_string()
                .contains("\"fast\" is not a valid io quantity"),
            "{e}"
        );
    }
}
