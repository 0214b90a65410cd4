//! One-line error messages.

/// An error and its causes joined by `: ` (what `anyhow` prints with `{:#}`), for logs,
/// stderr and API answers: the reader sees the whole reason on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // A wrapper that already prints its source (`#[error("...: {0}")]`) would
        // otherwise repeat it.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug)]
    struct Outer(std::io::Error, bool);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.1 {
                write!(f, "cannot open x: {}", self.0)
            } else {
                write!(f, "cannot open x")
            }
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn joins_causes_once() {
        let e = Outer(std::io::Error::other("disk on fire"), false);
        assert_eq!(chain(&e), "cannot open x: disk on fire");
        let e = Outer(std::io::Error::other("disk on fire"), true);
        assert_eq!(chain(&e), "cannot open x: disk on fire");
    }
}
