//! Names derived from test names: safe as PostgreSQL identifiers and Temporal task queues.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// PostgreSQL truncates identifiers to 63 bytes (`NAMEDATALEN - 1`).
const MAX_LEN: usize = 63;
/// Room kept for the test name in [`unique_name`], so the suffix always fits.
const UNIQUE_PREFIX_LEN: usize = 40;

/// Turns any string into a lowercase `[a-z0-9_]` name that starts with a letter or `_`,
/// has no doubled, leading or trailing `_`, and is at most 63 bytes long.
///
/// A name that has to be shortened ends with a hash of the whole input, so two long test
/// names that share a prefix still give two names.
pub fn sanitize(name: &str) -> String {
    sanitize_to(name, MAX_LEN)
}

/// A short name unique to this call in this run: the test name, sanitized and shortened,
/// then a suffix made of the process start time, the process id and a counter.
///
/// Use it for task queues, workflow ids and database names so tests running at the same
/// time, in one process or many, never share state.
pub fn unique_name(test_name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let prefix = sanitize_to(test_name, UNIQUE_PREFIX_LEN);
    sanitize(&format!(
        "{prefix}_{}_{}",
        process_tag(),
        base36(u64::from(n))
    ))
}

/// Identifies this process in this run: the time of the first call (a run that reuses a
/// long-lived server never meets an earlier run's names) and the process id (processes
/// that run at the same time differ).
fn process_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        // 36^6 ms is about 25 days: plenty to tell runs apart, six characters long.
        let time = (millis % 36u128.pow(6)) as u64;
        format!("{}{}", base36(time), base36(u64::from(std::process::id())))
    })
}

fn sanitize_to(name: &str, max_len: usize) -> String {
    let mut out = String::with_capacity(name.len().min(max_len));
    for c in name.chars() {
        let c = match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 't');
    }
    if out.len() > max_len {
        let hash = base36(fnv1a(name.as_bytes()));
        let keep = max_len - hash.len() - 1;
        out.truncate(keep);
        while out.ends_with('_') {
            out.pop();
        }
        out.push('_');
        out.push_str(&hash);
    }
    out
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(sanitize(input), expected, "sanitize({input:?})");
    }

    #[test]
    fn sanitize_table() {
        check("deploys_a_preview", "deploys_a_preview");
        check("api::tests::Deploy-Preview", "api_tests_deploy_preview");
        check("  weird   name!! ", "weird_name");
        check("__x__", "x");
        check("42_tests", "t42_tests");
        check("", "t");
        check("::", "t");
        check("émoji🚀name", "moji_name");
    }

    #[test]
    fn long_names_keep_a_hash_and_stay_distinct() {
        let a = sanitize(&format!("{}_a", "x".repeat(100)));
        let b = sanitize(&format!("{}_b", "x".repeat(100)));
        assert_eq!(a.len(), MAX_LEN, "{a}");
        assert!(a.len() <= MAX_LEN && b.len() <= MAX_LEN);
        assert_ne!(a, b);
        assert_eq!(a, sanitize(&format!("{}_a", "x".repeat(100))), "stable");
    }

    #[test]
    fn unique_names_are_unique_valid_and_short() {
        let long = "module::submodule::a_really_long_test_name_that_goes_on_and_on_and_on";
        let names: Vec<String> = (0..100).map(|_| unique_name(long)).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len());
        for name in &names {
            assert!(name.len() <= MAX_LEN, "{name}");
            assert_eq!(&sanitize(name), name, "already sanitized");
            assert!(name.starts_with("module_submodule_"), "{name}");
        }
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
