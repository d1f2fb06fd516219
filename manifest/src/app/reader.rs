//! Reading a spanned TOML tree: typed getters that record a located problem instead of
//! failing, so one parse reports every bad field of `rhone.toml` at once.

use std::fmt;
use std::ops::{Range, RangeInclusive};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One thing wrong with `rhone.toml`: where, which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in `rhone.toml`.
    pub line: usize,
    /// 1-based column (in characters) in `rhone.toml`.
    pub column: usize,
    /// Dotted path of the field, e.g. `run.port` or `routes.webhooks[1].path`. Empty only for
    /// a TOML syntax error that cannot be tied to a key.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rhone.toml:{}:{}: ", self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects the problems of one parse, in source order.
pub(crate) struct Diagnostics<'s> {
    src: &'s str,
    problems: Vec<Problem>,
}

impl<'s> Diagnostics<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        Diagnostics {
            src,
            problems: Vec::new(),
        }
    }

    pub(crate) fn report(&mut self, offset: usize, field: &str, message: impl Into<String>) {
        let (line, column) = position(self.src, offset);
        let problem = Problem {
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        };
        self.problems.push(problem);
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        position(self.src, offset).0
    }

    /// The problems sorted by position; empty when the file is valid.
    pub(crate) fn finish(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| (p.line, p.column));
        self.problems
    }

    /// Shows a value the way the user wrote it, for "found …" in messages.
    fn found(&self, value: &Spanned<DeValue<'_>>) -> String {
        match value.get_ref() {
            DeValue::Array(_) => "an array".to_owned(),
            DeValue::Table(_) => "a table".to_owned(),
            _ => {
                let text = self.src.get(value.span()).unwrap_or("").trim();
                match text.char_indices().nth(40) {
                    Some((cut, _)) => format!("{}…", &text[..cut]),
                    None => text.to_owned(),
                }
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A TOML syntax error, located. The tree is not available to name the field, so it is
/// guessed: the header on the error's line, else the key on that line under the section
/// header above it.
pub(crate) fn syntax_problem(src: &str, err: &toml::de::Error) -> Problem {
    let offset = err.span().map_or(0, |s| s.start);
    let (line, column) = position(src, offset);
    let lines: Vec<&str> = src.lines().collect();
    let this_line = lines.get(line - 1).copied().unwrap_or("").trim();
    let field = if this_line.starts_with('[') {
        this_line
            .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace())
            .to_owned()
    } else {
        let above = lines
            .iter()
            .take(line - 1)
            .rev()
            .find_map(|l| header_name(l));
        match (above.unwrap_or_default(), key_name(this_line)) {
            (section, None) => section,
            (section, Some(key)) if section.is_empty() => key.to_owned(),
            (section, Some(key)) => format!("{section}.{key}"),
        }
    };
    let message = format!("invalid TOML: {}", err.message().replace('\n', "; "));
    Problem {
        line,
        column,
        field,
        message,
    }
}

fn header_name(line: &str) -> Option<String> {
    let line = line.trim();
    let inner = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"));
    let inner = inner.or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
    Some(inner.trim().to_owned())
}

fn key_name(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (!key.is_empty() && key.chars().all(bare)).then_some(key)
}

/// A table of the document being read: its dotted path, its span (the `[header]` for a
/// section), and its entries, or `None` when the table is absent.
pub(crate) struct Table<'a, 'i> {
    pub(crate) path: String,
    span: Range<usize>,
    entries: Option<&'a DeTable<'i>>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn root(doc: &'a Spanned<DeTable<'i>>) -> Self {
        Table {
            path: String::new(),
            span: 0..0,
            entries: Some(doc.get_ref()),
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Reports every key not in `known`, naming the keys that are.
    pub(crate) fn deny_unknown(&self, d: &mut Diagnostics<'_>, known: &[&str], what: &str) {
        for (key, _) in self.entries.into_iter().flatten() {
            if !known.contains(&key.get_ref().as_ref()) {
                let expected = known.join(", ");
                let msg = format!("unknown {what}, expected one of: {expected}");
                d.report(key.span().start, &self.child_path(key.get_ref()), msg);
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Field<'a, 'i>> {
        let value = self.entries?.get(key)?;
        Some(Field {
            path: self.child_path(key),
            value,
        })
    }

    /// A field that must be present; reports it (at the table's header) when it is missing.
    pub(crate) fn required(
        &self,
        d: &mut Diagnostics<'_>,
        key: &str,
        expected: &str,
    ) -> Option<Field<'a, 'i>> {
        let field = self.get(key);
        if field.is_none() && self.entries.is_some() {
            let msg = format!("missing required field, expected {expected}");
            d.report(self.span.start, &self.child_path(key), msg);
        }
        field
    }

    /// A sub-table; absent tables read as empty. `required` reports a missing one.
    pub(crate) fn table(&self, d: &mut Diagnostics<'_>, key: &str, required: bool) -> Self {
        let path = self.child_path(key);
        match self.get(key) {
            Some(field) => {
                let expected = format!("a table [{path}]");
                field.table(d, &expected).unwrap_or(Table {
                    path,
                    span: 0..0,
                    entries: None,
                })
            }
            None => {
                if required {
                    d.report(self.span.start, &path, format!("missing section [{path}]"));
                }
                Table {
                    path,
                    span: 0..0,
                    entries: None,
                }
            }
        }
    }
}

/// One value of the document with its dotted path.
pub(crate) struct Field<'a, 'i> {
    pub(crate) path: String,
    value: &'a Spanned<DeValue<'i>>,
}

impl<'a, 'i> Field<'a, 'i> {
    pub(crate) fn offset(&self) -> usize {
        self.value.span().start
    }

    /// Reports `expected …, found …` for this value.
    pub(crate) fn expected(&self, d: &mut Diagnostics<'_>, expected: &str) {
        let msg = format!("expected {expected}, found {}", d.found(self.value));
        d.report(self.offset(), &self.path, msg);
    }

    /// Reports `expected …, found …` and yields no value.
    pub(crate) fn reject<T>(&self, d: &mut Diagnostics<'_>, expected: &str) -> Option<T> {
        self.expected(d, expected);
        None
    }

    /// Reports a free-form problem at this value.
    pub(crate) fn problem(&self, d: &mut Diagnostics<'_>, message: impl Into<String>) {
        d.report(self.offset(), &self.path, message);
    }

    pub(crate) fn str(&self, d: &mut Diagnostics<'_>, expected: &str) -> Option<&'a str> {
        match self.value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.expected(d, expected);
                None
            }
        }
    }

    /// An integer inside `range`; anything else reports "an integer between …".
    pub(crate) fn int(&self, d: &mut Diagnostics<'_>, range: RangeInclusive<i64>) -> Option<i64> {
        let n = match self.value.get_ref() {
            DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix()).ok(),
            _ => None,
        };
        match n {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                let expected = format!("an integer between {} and {}", range.start(), range.end());
                self.expected(d, &expected);
                None
            }
        }
    }

    /// The elements of an array, each with its indexed path (`field[0]`).
    pub(crate) fn array(&self, d: &mut Diagnostics<'_>, expected: &str) -> Vec<Field<'a, 'i>> {
        match self.value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, value)| Field {
                    path: format!("{}[{i}]", self.path),
                    value,
                })
                .collect(),
            _ => {
                self.expected(d, expected);
                Vec::new()
            }
        }
    }

    pub(crate) fn table(&self, d: &mut Diagnostics<'_>, expected: &str) -> Option<Table<'a, 'i>> {
        match self.value.get_ref() {
            DeValue::Table(entries) => Some(Table {
                path: self.path.clone(),
                span: self.value.span(),
                entries: Some(entries),
            }),
            _ => {
                self.expected(d, expected);
                None
            }
        }
    }
}
