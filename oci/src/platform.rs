//! Which manifest of a multi-architecture index a node runs: `linux/<GOARCH>`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An OCI platform, with Go's names (`amd64`, `arm64`), as Kubernetes' node label
/// `kubernetes.io/arch` spells them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<architecture>`.
    pub fn linux(architecture: &str) -> Platform {
        Platform { os: "linux".into(), architecture: architecture.into(), variant: None }
    }

    /// The platform this process runs on.
    pub fn host() -> Platform {
        Platform::linux(go_arch(std::env::consts::ARCH))
    }

    /// Whether an index entry for `entry` serves this platform. A missing variant on
    /// either side matches; arm64's only variant is v8.
    pub fn matches(&self, entry: &Platform) -> bool {
        if self.os != entry.os || self.architecture != entry.architecture {
            return false;
        }
        match (&self.variant, &entry.variant) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// Rust's `std::env::consts::ARCH` to Go's GOARCH.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let arm = Platform::linux("arm64");
        let v8 = Platform { variant: Some("v8".into()), ..arm.clone() };
        assert!(arm.matches(&v8) && v8.matches(&arm) && arm.matches(&arm));
        assert!(!arm.matches(&Platform::linux("amd64")));
        assert!(!arm.matches(&Platform { os: "windows".into(), ..arm.clone() }));
        assert_eq!(v8.to_string(), "linux/arm64/v8");
        assert!(["amd64", "arm64"].contains(&Platform::host().architecture.as_str()));
    }
}
