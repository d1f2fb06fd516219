//! Argument rules. Each refusal is INVALID_ARGUMENT naming the field and the rule broken.

use rhone_core::Name;
use uuid::Uuid;

use crate::error::ApiError;

/// Wake budgets the edge accepts, in milliseconds.
pub const WAKE_BUDGET_MS: std::ops::RangeInclusive<i32> = 100..=300_000;
/// Page size when `first` is not given.
pub const DEFAULT_PAGE: i32 = 20;
/// The largest page a listing returns.
pub const MAX_PAGE: i32 = 100;
const MAX_DISPLAY_NAME: usize = 100;
const MAX_EMAIL: usize = 254;

/// A workspace, project, app, environment or token name (DNS label rules).
pub fn name(field: &str, value: &str) -> Result<Name, ApiError> {
    Name::parse(value).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// A human-readable name: 1 to 100 characters after trimming, no control characters.
pub fn display_name(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_DISPLAY_NAME {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_DISPLAY_NAME} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// An email address, lowercased: `local@domain`, no spaces, at most 254 characters.
pub fn email(value: &str) -> Result<String, ApiError> {
    let value = value.trim().to_lowercase();
    let ok = value.len() <= MAX_EMAIL
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@') && domain.contains('.')
        });
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            "email",
            "must look like name@example.com (one '@', a dotted domain, no spaces, at most 254 characters)",
        ))
    }
}

/// How long a scale-to-zero environment stays awake without a request: 1 s to 24 h.
const SLEEP_AFTER_MS: std::ops::RangeInclusive<i32> = 1_000..=86_400_000;

pub fn sleep_after_ms(value: i32) -> Result<i64, ApiError> {
    if SLEEP_AFTER_MS.contains(&value) {
        Ok(i64::from(value))
    } else {
        Err(ApiError::invalid(
            "sleepAfterMs",
            format!(
                "must be between {} and {} milliseconds, got {value}",
                SLEEP_AFTER_MS.start(),
                SLEEP_AFTER_MS.end()
            ),
        ))
    }
}

pub fn wake_budget_ms(value: i32) -> Result<i64, ApiError> {
    if WAKE_BUDGET_MS.contains(&value) {
        Ok(i64::from(value))
    } else {
        Err(ApiError::invalid(
            "wakeBudgetMs",
            format!(
                "must be between {} and {} milliseconds, got {value}",
                WAKE_BUDGET_MS.start(),
                WAKE_BUDGET_MS.end()
            ),
        ))
    }
}

/// A listing page: `first` (1 to 100, default 20) items after the cursor `after`.
#[derive(Debug, Clone, Copy)]
pub struct PageArgs {
    pub first: u64,
    pub after: Option<Uuid>,
}

pub fn page(first: Option<i32>, after: Option<&str>) -> Result<PageArgs, ApiError> {
    let first = first.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&first) {
        return Err(ApiError::invalid(
            "first",
            format!("must be between 1 and {MAX_PAGE}, got {first}"),
        ));
    }
    let after = after
        .map(|cursor| {
            crate::cursor::decode(cursor)
                .ok_or_else(|| ApiError::invalid("after", "is not a cursor this API returned"))
        })
        .transpose()?;
    Ok(PageArgs {
        first: first as u64,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: std::fmt::Debug>(got: Result<T, ApiError>, expected: Result<&str, &str>) {
        match (got, expected) {
            (Ok(v), Ok(want)) => assert_eq!(format!("{v:?}"), want),
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e} lacks {want:?}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn rules() {
        check(name("name", "shop"), Ok("Name(\"shop\")"));
        check(
            name("name", "Shop"),
            Err("invalid name: name must start with a lowercase"),
        );
        check(email(" Ann@Example.com "), Ok("\"ann@example.com\""));
        check(email("ann"), Err("invalid email"));
        check(email("a b@x.io"), Err("invalid email"));
        check(
            display_name("displayName", "  "),
            Err("invalid displayName: must not be empty"),
        );
        check(wake_budget_ms(100), Ok("100"));
        check(sleep_after_ms(1_000), Ok("1000"));
        check(sleep_after_ms(999), Err("sleepAfterMs"));
        check(
            wake_budget_ms(300_001),
            Err("invalid wakeBudgetMs: must be between 100 and 300000"),
        );
        check(page(Some(0), None).map(|p| p.first), Err("invalid first"));
        check(page(Some(101), None).map(|p| p.first), Err("invalid first"));
        check(page(None, None).map(|p| p.first), Ok("20"));
        check(
            page(None, Some("nope")).map(|p| p.first),
            Err("invalid after"),
        );
    }
}
