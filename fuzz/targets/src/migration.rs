//! Migration files: [`rhone_migrate::classify`] on any text (a tenant's SQL).

use rhone_migrate::{Class, ClassifyError, RULES, classify};

const FILE: &str = "migrations/0001_fuzz.sql";

/// Classifies `data` as a migration file. An accepted file has statements, each at a line and
/// column inside the text, each classified as its rule says, and the file's class is the
/// worst of them; a refusal names the file, and a position inside the text.
pub fn migration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count() as u64;
    match classify(FILE, text) {
        Ok(classified) => {
            assert!(
                !classified.statements.is_empty(),
                "an accepted file has a statement"
            );
            for s in &classified.statements {
                assert!(
                    (1..=lines).contains(&s.line) && s.column >= 1,
                    "statement at {}:{} outside the {lines} lines",
                    s.line,
                    s.column
                );
                let rule = RULES
                    .iter()
                    .find(|r| r.id == s.rule)
                    .unwrap_or_else(|| panic!("rule {} is not in RULES", s.rule));
                assert_eq!(rule.class, s.class, "rule {} decides the class", s.rule);
                assert!(s.sql.chars().count() <= rhone_migrate::MAX_SQL_CHARS + 1);
            }
            let worst = classified
                .statements
                .iter()
                .map(|s| s.class)
                .max()
                .unwrap_or(Class::Expand);
            assert_eq!(classified.class(), worst);
        }
        Err(err) => {
            let shown = err.to_string();
            assert!(shown.starts_with(FILE), "{shown}");
            if let ClassifyError::Parse { line, column, .. }
            | ClassifyError::Transaction { line, column, .. }
            | ClassifyError::ConcurrentNotAlone { line, column, .. } = err
            {
                // sqlparser may point just past the last line (input ended early).
                assert!(
                    (1..=lines + 1).contains(&line) && column >= 1,
                    "{shown}: outside the {lines} lines"
                );
            }
        }
    }
}
