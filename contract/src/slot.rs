//! The two /usr slots.

use std::fmt;

/// A /usr slot: `a` or `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Slot A, the one a fresh disk boots.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// `a` or `b`, as in partition and entry names and `herd.slot=`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` → A, `b` → B, anything else `None`.
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Slot::ALL {
            assert_eq!(Slot::parse(s.name()), Some(s));
            assert_eq!(s.other().other(), s);
        }
        assert_eq!(Slot::parse("c"), None);
        assert_eq!(Slot::B.to_string(), "b");
    }
}
