//! One way to put an error and its causes into words, for both sides: aya's and
//! tonic's top-level messages often omit the cause that tells the user what to fix.

/// `e` followed by each of its sources not already part of the text, joined by ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg = format!("{msg}: {s_text}");
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("`bpf_link_create` failed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_appended_once() {
        let e = Outer(std::io::Error::from_raw_os_error(16));
        assert_eq!(chain(&e), "`bpf_link_create` failed: Device or resource busy (os error 16)");
        let plain = std::io::Error::other("x");
        assert_eq!(chain(&plain), "x");
    }
}
