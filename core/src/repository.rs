//! A deploy's repository location: the one check of what a tenant may ask the builder to
//! clone, made by the API (which names the field) and again by the clone activity (a
//! workflow can be started around the API, from the Temporal UI or a script).
//!
//! Accepted: `https://`, `http://`, `ssh://` and `git://` URLs and scp-like `git@host:path`,
//! none with a credential in it (the location is recorded in the audit row, the deployment,
//! stage evidence and the Temporal history, all readable by others). A local path or a
//! `file://` URL names a repository on the builder's own host: accepted only where the
//! platform's operator allows it (`rhone dev` does; `RHONE_ALLOW_LOCAL_REPOSITORIES=1`).

/// The longest repository location accepted.
pub const MAX_REPOSITORY_LEN: usize = 2048;

/// The environment variable by which an operator allows local repositories.
pub const ALLOW_LOCAL_VAR: &str = "RHONE_ALLOW_LOCAL_REPOSITORIES";

const REMOTE_SCHEMES: [&str; 4] = ["https://", "http://", "ssh://", "git://"];

/// The value of git's `GIT_ALLOW_PROTOCOL` for a clone: git itself refuses any other
/// transport (`ext::`, `fd::`, a helper), including in redirects and submodules.
pub fn git_allow_protocol(allow_local: bool) -> &'static str {
    if allow_local {
        "https:http:ssh:git:file"
    } else {
        "https:http:ssh:git"
    }
}

/// Whether `location` names a repository on the builder's host (an absolute path or a
/// `file://` URL).
pub fn is_local(location: &str) -> bool {
    let t = location.trim();
    t.starts_with('/') || t.starts_with("file://")
}

/// Checks a repository location; returns it trimmed, or why it is refused (for the
/// `repository` field).
pub fn check(location: &str, allow_local: bool) -> Result<String, String> {
    let t = location.trim();
    if t.is_empty() {
        return Err("is empty; give a git URL".to_owned());
    }
    if t.len() > MAX_REPOSITORY_LEN {
        return Err(format!("is longer than {MAX_REPOSITORY_LEN} characters"));
    }
    if t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or control characters".to_owned());
    }
    if is_local(t) {
        if !allow_local {
            return Err(format!(
                "{t:?} is a path on the builder's host; this platform clones only https://, ssh:// and git:// URLs (its operator allows local repositories with {ALLOW_LOCAL_VAR}=1, as `rhone dev` does)"
            ));
        }
        return Ok(t.to_owned());
    }
    if let Some(scheme) = REMOTE_SCHEMES.iter().find(|s| t.starts_with(**s)) {
        let rest = &t[scheme.len()..];
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            // ssh logs in as a user (`ssh://git@host/…`); the key authenticates it. Any
            // other user part, and a password anywhere, is a credential.
            if *scheme != "ssh://" || userinfo.contains(':') {
                return Err(format!(
                    "carries credentials before {host:?}; they would be recorded in the audit log, the deployment and its workflow history. Use a URL without them (a public repository, or ssh:// with a deploy key)"
                ));
            }
        }
        if authority.rsplit('@').next().unwrap_or("").is_empty() {
            return Err("has no host".to_owned());
        }
        return Ok(t.to_owned());
    }
    if t.contains("://") {
        return Err(
            "uses a scheme this platform does not clone from: give an https://, ssh:// or git:// URL"
                .to_owned(),
        );
    }
    // scp-like `user@host:path`: a host, then a colon before any slash.
    if let Some((host, path)) = t.split_once(':')
        && !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_@".contains(c))
        && !path.is_empty()
        && !path.starts_with(':')
    {
        if host
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.is_empty())
        {
            return Err("has an empty user before its host".to_owned());
        }
        return Ok(t.to_owned());
    }
    Err(format!(
        "is not a repository location: give an https://, ssh:// or git:// URL or git@host:path{}",
        if allow_local {
            ", or an absolute path"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_locations_pass() {
        for ok in [
            "https://example.com/a.git",
            "http://example.com/a.git",
            "git://example.com/a.git",
            "ssh://git@host/r.git",
            "ssh://host:2222/r.git",
            "git@github.com:a/b.git",
            "  https://example.com/a.git ",
        ] {
            assert_eq!(check(ok, false).as_deref(), Ok(ok.trim()), "{ok}");
        }
    }

    #[test]
    fn credentials_are_refused_wherever_they_sit() {
        for bad in [
            "https://TOKEN@host/repo.git",
            "https://u:secret@host/r.git",
            "http://ghp_abc@github.com/a/b",
            "git://x@host/r.git",
            "ssh://git:pass@host/r.git",
        ] {
            let why = check(bad, true).expect_err(bad);
            assert!(
                why.contains("credentials") || why.contains("password"),
                "{bad}: {why}"
            );
            assert!(
                !why.contains("TOKEN") && !why.contains("secret") && !why.contains("ghp_"),
                "{why}"
            );
        }
    }

    #[test]
    fn local_repositories_only_where_allowed() {
        for local in ["/srv/git/app", "file:///tmp/x"] {
            assert!(is_local(local));
            let why = check(local, false).expect_err(local);
            assert!(
                why.contains(ALLOW_LOCAL_VAR) && why.contains("rhone dev"),
                "{why}"
            );
            assert_eq!(check(local, true).as_deref(), Ok(local));
        }
        assert!(!is_local("https://h/r"));
    }

    #[test]
    fn malformed_locations_are_refused() {
        for bad in [
            "",
            "relative/path",
            "./here",
            "-uhoh",
            "--upload-pack=x:y",
            "https://a b",
            "ftp://x/y",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::3",
            "https:///path",
            "https://",
        ] {
            assert!(check(bad, true).is_err(), "{bad}");
        }
        assert!(
            check(
                &format!("https://h/{}", "a".repeat(MAX_REPOSITORY_LEN)),
                true
            )
            .is_err()
        );
    }
}
