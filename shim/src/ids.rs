//! Identifiers that reach host paths and command lines: namespaces, sandbox, container
//! and exec ids. Each is checked against containerd's identifier rules before any path
//! or argument is formed from it, so `..`, `/etc` or `a,b=c` never get that far.

use std::fmt;

/// containerd's limit (`identifiers.Validate`).
const MAX_LEN: usize = 76;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId {
    what: &'static str,
    value: String,
    why: &'static str,
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug formatting escapes whatever control bytes a caller put in the id.
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.why)
    }
}

impl std::error::Error for InvalidId {}

/// Checks `value` the way containerd checks its identifiers: 1 to 76 characters, ASCII
/// letters and digits in runs separated by single `.`, `_` or `-`
/// (`^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$`).
pub fn validate(what: &'static str, value: &str) -> Result<(), InvalidId> {
    let fail = |why| {
        Err(InvalidId {
            what,
            value: value.chars().take(MAX_LEN + 8).collect(),
            why,
        })
    };
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > MAX_LEN {
        return fail("longer than 76 characters");
    }
    let mut after_separator = true;
    for b in value.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => after_separator = false,
            b'.' | b'_' | b'-' if !after_separator => after_separator = true,
            b'.' | b'_' | b'-' => {
                return fail("separators (. _ -) must stand between letters or digits");
            }
            _ => return fail("only letters, digits, '.', '_' and '-' are allowed"),
        }
    }
    if after_separator {
        return fail("must end with a letter or digit");
    }
    Ok(())
}

/// FNV-1a of `bytes`: stable across builds and hosts, for names that must be found again
/// from the same input (pod directories, VM cgroups) after a shim restart.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_identifiers_pass() {
        for ok in [
            "pod1",
            "a",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "k8s.io",
            "my_pod-1.a",
        ] {
            validate("id", ok).unwrap();
        }
    }

    #[test]
    fn paths_and_option_syntax_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "/etc",
            "a/b",
            "../x",
            "x..y",
            "-x",
            "x-",
            "a,b=c",
            "a b",
            "a\nb",
            "é",
            "a\0",
            &"x".repeat(77),
        ] {
            let e = validate("sandbox id", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid sandbox id"), "{e}");
        }
    }
}
