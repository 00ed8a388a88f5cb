//! Validated names. Every bpffs path component bpfleet creates is built from one of
//! these, so no path from user input is ever joined unchecked.

use std::fmt;

use thiserror::Error;

/// A name that failed validation, and what a valid one looks like.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct NameError {
    pub kind: &'static str,
    pub value: String,
    pub rule: &'static str,
}

fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok(Self(value))
                } else {
                    Err(NameError { kind: $kind, value, rule: $rule })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A function name in an ELF object (a C identifier, at most 64 characters).
    ProgramName,
    "program name",
    "must be a C identifier (letters, digits, '_', not starting with a digit) of at most 64 characters",
    |s| s.len() <= 64 && is_c_identifier(s)
);

name_type!(
    /// A global variable name (a C identifier, at most 64 characters).
    GlobalName,
    "globalData variable",
    "must be a C identifier of at most 64 characters, e.g. SAMPLE_RATE",
    |s| s.len() <= 64 && is_c_identifier(s)
);

name_type!(
    /// A Linux network interface name.
    InterfaceName,
    "interface name",
    "must be 1-15 characters of letters, digits, '_', '.', ':', '@', '-', not starting with a symbol",
    |s| {
        !s.is_empty()
            && s.len() <= crate::limits::MAX_IFNAME
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.:@-".contains(c))
    }
);

name_type!(
    /// The uid of a BpfProgram (or a standalone owner id): the bpffs directory of an owner.
    OwnerUid,
    "owner uid",
    "must be 1-64 characters of lowercase letters, digits and '-'",
    |s| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }
);

name_type!(
    /// The uid of a pod (`metadata.uid`, a lowercase UUID): the bpffs directory of the
    /// links an owner's programs have inside that pod.
    PodUid,
    "pod uid",
    "must be 1-64 characters of lowercase letters, digits and '-', as in metadata.uid",
    |s| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }
);

name_type!(
    /// A map name in an ELF object. bpffs refuses '.' in names, so data-section maps
    /// (`.rodata`, `.bss`) are never pinned.
    MapName,
    "map name",
    "must be 1-64 characters of letters, digits and '_'",
    |s| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
);

name_type!(
    /// A Kubernetes node name (DNS subdomain).
    NodeName,
    "node name",
    "must be a DNS subdomain: at most 253 lowercase letters, digits, '-' and '.'",
    |s| {
        !s.is_empty()
            && s.len() <= 253
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names() {
        assert!(ProgramName::new("count_packets").is_ok());
        assert!(ProgramName::new("_x1").is_ok());
        for bad in ["", "1abc", "../etc", "a/b", "a b", "a.b", &"x".repeat(65)] {
            let err = ProgramName::new(bad).unwrap_err();
            assert!(err.to_string().contains("C identifier"), "{err}");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "veth-a1", "br0.100", "lo"] {
            assert!(InterfaceName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "-x", "eth/0", "a".repeat(16).as_str(), "eth 0"] {
            assert!(InterfaceName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_components_cannot_escape() {
        for bad in ["..", ".", "a/b", ""] {
            assert!(MapName::new(bad).is_err(), "{bad}");
            assert!(OwnerUid::new(bad).is_err(), "{bad}");
            assert!(PodUid::new(bad).is_err(), "{bad}");
        }
        assert!(PodUid::new("0b8e4f4c-7a51-4d6e-9d2a-3c1f0e9b7a65").is_ok());
        assert!(PodUid::new("0B8E4F4C").is_err(), "metadata.uid is lowercase");
        assert!(MapName::new("global_d.rodata").is_err());
        assert!(MapName::new("packet_count").is_ok());
        assert!(OwnerUid::new("6f1c1b8e-3a7e-4d0a-9f57-0f7c2b0f6a11").is_ok());
        assert!(NodeName::new("node-1.example").is_ok());
        assert!(NodeName::new("Node_1").is_err());
    }
}
