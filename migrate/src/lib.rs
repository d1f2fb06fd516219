//! Database migrations read before they run: each SQL file is parsed with `sqlparser`
//! (PostgreSQL dialect) and each statement classified [`Class::Expand`] (safe while the old
//! artifact still runs against the same database) or [`Class::Contract`] (destructive, locking,
//! or breaking the old artifact: it needs an approval naming it), with the rule that decided it.
//!
//! The rules follow Squawk's, pgroll's and Reshape's reading of PostgreSQL ≥ 11 locks and
//! rewrites. Anything not recognised is a contract: "not known to be safe". A crate of its own,
//! with no I/O, so that the activity that runs migrations records what it read as evidence.

use std::collections::HashSet;
use std::fmt::Display;

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    AlterColumnOperation, AlterTable, AlterTableOperation, AlterTypeOperation, ColumnDef,
    ColumnOption, DataType, Expr, FromTable, FunctionArguments, ObjectName, ObjectType,
    RenameTableNameKind, Statement as Ast, TableConstraint,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use rules::*;

/// The longest [`Statement::sql`] kept, in characters (the last one then being `…`).
pub const MAX_SQL_CHARS: usize = 200;

/// What a statement does to an artifact that still runs against the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Safe while the old artifact still runs.
    Expand,
    /// Destructive, locking, or breaking the old artifact; needs an approval naming it.
    Contract,
}

/// One statement of a migration file, classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// Where the statement's first keyword is, 1-based.
    pub line: u64,
    pub column: u64,
    /// The statement as written, trimmed, at most [`MAX_SQL_CHARS`] characters.
    pub sql: String,
    pub class: Class,
    /// The rule that decided the class: a short stable id, e.g. `drop-column`.
    pub rule: &'static str,
    /// Why, in one sentence naming the table or column.
    pub reason: String,
    /// `CREATE INDEX CONCURRENTLY` or `DROP INDEX CONCURRENTLY`: it cannot run in a
    /// transaction, so it is the only statement of its file.
    pub concurrent: bool,
}

/// A migration file's statements, classified, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classified {
    pub file: String,
    pub statements: Vec<Statement>,
}

impl Classified {
    /// The file's class: its worst statement's.
    pub fn class(&self) -> Class {
        self.statements
            .iter()
            .map(|s| s.class)
            .max()
            .unwrap_or(Class::Expand)
    }

    /// The statements that need an approval.
    pub fn contract(&self) -> impl Iterator<Item = &Statement> {
        self.statements
            .iter()
            .filter(|s| s.class == Class::Contract)
    }
}

/// Why a migration file is refused before it runs. Positions are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum ClassifyError {
    /// The SQL does not parse; `message` is sqlparser's, without its position.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{file}: no SQL statement (the file is empty or only comments)")]
    Empty { file: String },
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …: Rhone applies each file in one transaction.
    #[error(
        "{file}:{line}:{column}: transaction control is not allowed: Rhone applies each migration file in one transaction"
    )]
    Transaction {
        file: String,
        line: u64,
        column: u64,
    },
    /// A CONCURRENTLY statement cannot run in a transaction, so it must be alone in its file.
    #[error(
        "{file}:{line}:{column}: a CONCURRENTLY statement cannot run in a transaction: put it alone in its own migration file"
    )]
    ConcurrentNotAlone {
        file: String,
        line: u64,
        column: u64,
    },
}

/// Classifies one migration file, `file` naming it in results and errors.
pub fn classify(file: &str, sql: &str) -> Result<Classified, ClassifyError> {
    classify_in(file, sql, &mut HashSet::new())
}

/// Classifies migration files `(name, sql)` in order. A table created by an earlier statement,
/// in this file or an earlier one, is new: the old artifact does not use it and it has no rows,
/// so indexing or altering it is an expand.
pub fn classify_all(files: &[(String, String)]) -> Result<Vec<Classified>, ClassifyError> {
    let mut new_tables = HashSet::new();
    files
        .iter()
        .map(|(file, sql)| classify_in(file, sql, &mut new_tables))
        .collect()
}

/// Parses `sql` one statement at a time, as `Parser::parse_statements` does, keeping where each
/// statement starts and ends (sqlparser's own spans leave out leading keywords, or are empty).
fn classify_in(
    file: &str,
    sql: &str,
    new_tables: &mut HashSet<String>,
) -> Result<Classified, ClassifyError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| parse_error(file, e.location, e.message))?;
    let (tokens, drops_concurrently) = strip_drop_index_concurrently(tokens);
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let next = parser.peek_token_ref();
        if next.token == Token::EOF {
            break;
        }
        let start = next.span.start;
        let ast = parser.parse_statement().map_err(|e| {
            let message = e.to_string();
            let message = message
                .strip_prefix("sql parser error: ")
                .unwrap_or(&message);
            match split_location(message) {
                Some((message, at)) => parse_error(file, at, message.into()),
                None => parse_error(file, start, message.into()),
            }
        })?;
        let after = parser.peek_token_ref();
        if !matches!(after.token, Token::EOF | Token::SemiColon) {
            let message = format!("Expected: end of statement, found: {}", after.token);
            return Err(parse_error(file, after.span.start, message));
        }
        let (line, column) = (start.line, start.column);
        if is_transaction(&ast) {
            let file = file.into();
            return Err(ClassifyError::Transaction { file, line, column });
        }
        let concurrent = match &ast {
            Ast::CreateIndex(index) => index.concurrently,
            _ => drops_concurrently.contains(&start),
        };
        let v = verdict(&ast, concurrent, new_tables);
        let text = &sql[offset(sql, start)..offset(sql, last_token_end(&parser))];
        statements.push(Statement {
            line,
            column,
            sql: shorten(text.trim()),
            class: v.rule.class,
            rule: v.rule.id,
            reason: v.reason,
            concurrent,
        });
    }
    let file = file.to_string();
    match statements.iter().find(|s| s.concurrent) {
        _ if statements.is_empty() => Err(ClassifyError::Empty { file }),
        Some(&Statement { line, column, .. }) if statements.len() > 1 => {
            Err(ClassifyError::ConcurrentNotAlone { file, line, column })
        }
        _ => Ok(Classified { file, statements }),
    }
}

fn parse_error(file: &str, at: Location, message: String) -> ClassifyError {
    ClassifyError::Parse {
        file: file.into(),
        line: at.line,
        column: at.column,
        message,
    }
}

/// Splits sqlparser's " at Line: 3, Column: 14" suffix off a message.
fn split_location(message: &str) -> Option<(&str, Location)> {
    let (head, tail) = message.rsplit_once(" at Line: ")?;
    let (line, column) = tail.split_once(", Column: ")?;
    let at = Location::new(line.trim().parse().ok()?, column.trim().parse().ok()?);
    Some((head, at))
}

/// sqlparser 0.64 does not parse `DROP INDEX CONCURRENTLY`: the keyword is taken out of the
/// token stream (the other tokens keep their positions), and the statement's start recorded.
fn strip_drop_index_concurrently(
    tokens: Vec<TokenWithSpan>,
) -> (Vec<TokenWithSpan>, Vec<Location>) {
    let (mut kept, mut starts) = (Vec::with_capacity(tokens.len()), Vec::new());
    let mut words: Vec<(Keyword, Location)> = Vec::new();
    for t in tokens {
        if let Token::Word(w) = &t.token {
            if let [.., (Keyword::DROP, start), (Keyword::INDEX, _)] = words[..]
                && w.keyword == Keyword::CONCURRENTLY
            {
                starts.push(start);
                words.clear();
                continue;
            }
            words.push((w.keyword, t.span.start));
        } else if !matches!(t.token, Token::Whitespace(_)) {
            words.push((Keyword::NoKeyword, t.span.start));
        }
        kept.push(t);
    }
    (kept, starts)
}

/// The end of the last token the parser consumed.
fn last_token_end(parser: &Parser) -> Location {
    let mut i = parser.get_current_index();
    while i > 0 && matches!(parser.token_at(i).token, Token::Whitespace(_)) {
        i -= 1;
    }
    parser.token_at(i).span.end
}

/// The byte offset of a 1-based line and (character) column, as sqlparser counts them.
fn offset(sql: &str, at: Location) -> usize {
    let (mut line, mut column) = (1, 1);
    for (i, c) in sql.char_indices() {
        if (line, column) == (at.line, at.column) {
            return i;
        }
        (line, column) = if c == '\n' {
            (line + 1, 1)
        } else {
            (line, column + 1)
        };
    }
    sql.len()
}

fn shorten(sql: &str) -> String {
    if sql.chars().count() <= MAX_SQL_CHARS {
        return sql.into();
    }
    let mut short: String = sql.chars().take(MAX_SQL_CHARS - 1).collect();
    short.push('…');
    short
}

fn is_transaction(ast: &Ast) -> bool {
    matches!(
        ast,
        Ast::StartTransaction { .. }
            | Ast::Commit { .. }
            | Ast::Rollback { .. }
            | Ast::Savepoint { .. }
            | Ast::ReleaseSavepoint { .. }
    )
}

/// A rule: its stable id, the class it decides, and its reason, where `{0}` is the table (or
/// object) and `{1}`, `{2}` the column or other details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: &'static str,
    pub class: Class,
    pub reason: &'static str,
}

impl Rule {
    /// This rule, with its reason's `{n}` replaced by `args[n]`.
    fn with(&self, args: &[&dyn Display]) -> Verdict {
        let mut parts = self.reason.split('{');
        let mut reason = parts.next().unwrap_or_default().to_string();
        for part in parts {
            let (n, rest) = part.split_once('}').unwrap_or((part, ""));
            if let Some(arg) = n.parse::<usize>().ok().and_then(|n| args.get(n)) {
                reason += &arg.to_string();
            }
            reason += rest;
        }
        Verdict {
            rule: *self,
            reason,
        }
    }
}

/// Every rule, expand then contract.
pub use rules::ALL as RULES;

#[rustfmt::skip]
mod rules {
    use super::{Class::{Contract, Expand}, Rule};

    /// Zero-argument functions PostgreSQL does not mark volatile: as a column default they are
    /// evaluated once, when the column is added, so PostgreSQL ≥ 11 does not rewrite the table.
    pub const STABLE_FUNCTIONS: &[&str] = &["now", "current_timestamp", "current_date", "current_time",
        "localtime", "localtimestamp", "transaction_timestamp", "statement_timestamp", "current_user",
        "session_user", "current_schema"];
    /// Column types filled from a new sequence when added: the table is rewritten.
    pub const SERIAL_TYPES: &[&str] = &["serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"];

    /// Defines each rule as a constant, and [`ALL`] listing them in order.
    macro_rules! rules {
        ($($name:ident = ($id:literal, $class:ident, $reason:literal);)*) => {
            $(pub const $name: Rule = Rule { id: $id, class: $class, reason: $reason };)*
            pub const ALL: &[Rule] = &[$($name),*];
        };
    }

    rules! {
        CREATE_TABLE = ("create-table", Expand, "creates table {0}");
        CREATE_INDEX_CONCURRENTLY = ("create-index-concurrently", Expand, "builds index{1} on {0} concurrently, without blocking writes");
        NEW_TABLE = ("new-table", Expand, "changes {0}, which this migration set creates: the old artifact does not use it and it has no rows yet");
        ADD_COLUMN_NULLABLE = ("add-column-nullable", Expand, "adds nullable column {1} to {0}; the old artifact does not see it");
        ADD_COLUMN_CONSTANT_DEFAULT = ("add-column-constant-default", Expand, "adds column {1} to {0} with the constant DEFAULT {2}, without rewriting the table (PostgreSQL ≥ 11)");
        DROP_NOT_NULL = ("drop-not-null", Expand, "lets column {1} of {0} be NULL");
        SET_DEFAULT = ("set-default", Expand, "sets the default of column {1} of {0} to {2}, for new rows only");
        DROP_DEFAULT = ("drop-default", Expand, "drops the default of column {1} of {0}, for new rows only");
        ADD_CONSTRAINT_NOT_VALID = ("add-constraint-not-valid", Expand, "adds {1} to {0} NOT VALID: only new rows are checked until VALIDATE CONSTRAINT");
        VALIDATE_CONSTRAINT = ("validate-constraint", Expand, "validates constraint {1} of {0}, scanning its rows without blocking writes");
        ADD_UNIQUE_USING_INDEX = ("add-unique-using-index", Expand, "adds a UNIQUE constraint to {0} from its existing index {1}");
        CREATE_VIEW = ("create-view", Expand, "creates view {0}");
        CREATE_SEQUENCE = ("create-sequence", Expand, "creates sequence {0}");
        CREATE_TYPE = ("create-type", Expand, "creates type {0}");
        CREATE_EXTENSION = ("create-extension", Expand, "creates extension {0}");
        CREATE_SCHEMA = ("create-schema", Expand, "creates schema {0}");
        CREATE_FUNCTION = ("create-function", Expand, "creates function {0}");
        ENUM_ADD_VALUE = ("enum-add-value", Expand, "adds value {1} to enum {0}; the old artifact never sees it");
        COMMENT_ON = ("comment-on", Expand, "sets the comment of {0}");
        GRANT = ("grant", Expand, "grants privileges: nothing the old artifact has is taken away");
        INSERT = ("insert", Expand, "inserts rows into {0}");
        SESSION_SETTING = ("session-setting", Expand, "`{0}` changes a setting of this migration's session only");

        DROP_TABLE = ("drop-table", Contract, "drops table {0}, which the old artifact may still use");
        DROP_COLUMN = ("drop-column", Contract, "drops column {1} of {0}, which the old artifact still reads and writes");
        DROP_INDEX = ("drop-index", Contract, "drops index {0}{1}, which the old artifact's queries may still need");
        DROP_VIEW = ("drop-view", Contract, "drops view {0}, which the old artifact may still read");
        DROP_TYPE = ("drop-type", Contract, "drops type {0}, which the old artifact may still use");
        DROP_SCHEMA = ("drop-schema", Contract, "drops schema {0}, which the old artifact may still use");
        DROP_SEQUENCE = ("drop-sequence", Contract, "drops sequence {0}, which the old artifact may still use");
        DROP_FUNCTION = ("drop-function", Contract, "drops function {0}, which the old artifact may still call");
        DROP_OBJECT = ("drop-object", Contract, "`{0}` drops what the old artifact may still use");
        DROP_CONSTRAINT = ("drop-constraint", Contract, "drops constraint {1} of {0}, which the old artifact may rely on");
        RENAME_TABLE = ("rename-table", Contract, "renames table {0} to {1}: the old artifact still uses the old name");
        RENAME_COLUMN = ("rename-column", Contract, "renames column {1} of {0} to {2}: the old artifact still uses the old name");
        CHANGE_COLUMN_TYPE = ("change-column-type", Contract, "changes the type of column {1} of {0} to {2}: the table may be rewritten under an ACCESS EXCLUSIVE lock, and the old artifact expects the old type");
        SET_NOT_NULL = ("set-not-null", Contract, "sets column {1} of {0} NOT NULL: every row is scanned under an ACCESS EXCLUSIVE lock, and the old artifact's inserts without {1} fail");
        ADD_COLUMN_NOT_NULL_WITHOUT_DEFAULT = ("add-column-not-null-without-default", Contract, "adds column {1} to {0} as NOT NULL without a DEFAULT: it fails on existing rows, and the old artifact's inserts, which do not set {1}, would fail");
        ADD_COLUMN_VOLATILE_DEFAULT = ("add-column-volatile-default", Contract, "adds column {1} to {0} with DEFAULT {2}, which is not known to be constant: the table is rewritten under an ACCESS EXCLUSIVE lock");
        ADD_COLUMN_SERIAL = ("add-column-serial", Contract, "adds column {1} of type {2} to {0}: filling it from a sequence rewrites the table under an ACCESS EXCLUSIVE lock");
        ADD_COLUMN_GENERATED = ("add-column-generated", Contract, "adds generated column {1} to {0}: computing it for every row rewrites the table under an ACCESS EXCLUSIVE lock");
        CREATE_INDEX_WITHOUT_CONCURRENTLY = ("create-index-without-concurrently", Contract, "builds index{1} on {0} without CONCURRENTLY, blocking writes to {0} until it is built");
        ADD_CONSTRAINT_WITHOUT_NOT_VALID = ("add-constraint-without-not-valid", Contract, "adds {1} to {0} without NOT VALID: every row is checked while writes to {0} are blocked");
        ADD_PRIMARY_KEY = ("add-primary-key", Contract, "adds a primary key to {0}: its index is built, or its columns checked NOT NULL, under an ACCESS EXCLUSIVE lock");
        ADD_UNIQUE_CONSTRAINT = ("add-unique-constraint", Contract, "adds a UNIQUE constraint{1} to {0}, building its index under an ACCESS EXCLUSIVE lock (build a unique index CONCURRENTLY, then add the constraint USING INDEX)");
        REPLACE_VIEW = ("replace-view", Contract, "replaces view {0}, which the old artifact may still read");
        REPLACE_FUNCTION = ("replace-function", Contract, "replaces function {0}, which the old artifact may still call");
        ALTER_TYPE = ("alter-type", Contract, "changes type {0} ({1}), which the old artifact still uses");
        REVOKE = ("revoke", Contract, "revokes privileges the old artifact may rely on");
        TRUNCATE = ("truncate", Contract, "empties {0} under an ACCESS EXCLUSIVE lock");
        DELETE = ("delete", Contract, "deletes rows of {0}, which the old artifact may still read");
        UPDATE = ("update", Contract, "updates rows of {0}, locking them until the migration commits while the old artifact may still write them");
        NOT_KNOWN_SAFE = ("not-known-safe", Contract, "`{0}` is not known to be safe while the old artifact runs");
    }
}

/// A rule and its reason for one statement.
struct Verdict {
    rule: Rule,
    reason: String,
}

/// Anything not recognised: its first line, in `sqlparser`'s rendering.
fn unknown(what: impl Display) -> Verdict {
    let what = what.to_string();
    NOT_KNOWN_SAFE.with(&[&shorten(what.lines().next().unwrap_or_default())])
}

/// A table's name as PostgreSQL resolves it: unquoted parts folded to lower case, `public.`
/// dropped.
fn table_key(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) if ident.quote_style.is_some() => ident.value.clone(),
            Some(ident) => ident.value.to_lowercase(),
            None => part.to_string(),
        })
        .collect();
    let key = parts.join(".");
    match key.strip_prefix("public.") {
        Some(rest) => rest.into(),
        None => key,
    }
}

fn names(names: &[impl Display]) -> String {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    names.join(", ")
}

/// `" name"`, or nothing for an unnamed index or constraint.
fn named(name: Option<&impl Display>) -> String {
    name.map(|n| format!(" {n}")).unwrap_or_default()
}

fn verdict(ast: &Ast, concurrent: bool, new_tables: &mut HashSet<String>) -> Verdict {
    match ast {
        Ast::CreateTable(t) => {
            // With IF NOT EXISTS the table may be an existing one: not counted as new.
            if !t.if_not_exists {
                new_tables.insert(table_key(&t.name));
            }
            CREATE_TABLE.with(&[&t.name])
        }
        Ast::CreateIndex(i) => {
            let rule = if i.concurrently {
                CREATE_INDEX_CONCURRENTLY
            } else if new_tables.contains(&table_key(&i.table_name)) {
                NEW_TABLE
            } else {
                CREATE_INDEX_WITHOUT_CONCURRENTLY
            };
            rule.with(&[&i.table_name, &named(i.name.as_ref())])
        }
        Ast::AlterTable(t) => alter_table(t, new_tables),
        Ast::Drop {
            object_type,
            names: n,
            ..
        } => {
            let rule = match object_type {
                ObjectType::Table => {
                    n.iter()
                        .for_each(|name| _ = new_tables.remove(&table_key(name)));
                    DROP_TABLE
                }
                ObjectType::View | ObjectType::MaterializedView => DROP_VIEW,
                ObjectType::Index => DROP_INDEX,
                ObjectType::Type => DROP_TYPE,
                ObjectType::Schema => DROP_SCHEMA,
                ObjectType::Sequence => DROP_SEQUENCE,
                _ => return DROP_OBJECT.with(&[&shorten(&ast.to_string())]),
            };
            rule.with(&[&names(n), &if concurrent { " (concurrently)" } else { "" }])
        }
        Ast::DropFunction(f) => DROP_FUNCTION.with(&[&names(&f.func_desc)]),
        Ast::DropExtension(_) | Ast::DropTrigger(_) | Ast::DropDomain(_) | Ast::DropPolicy(_) => {
            DROP_OBJECT.with(&[&shorten(&ast.to_string())])
        }
        Ast::CreateView(v) if v.or_replace => REPLACE_VIEW.with(&[&v.name]),
        Ast::CreateView(v) => CREATE_VIEW.with(&[&v.name]),
        Ast::CreateFunction(f) if f.or_replace => REPLACE_FUNCTION.with(&[&f.name]),
        Ast::CreateFunction(f) => CREATE_FUNCTION.with(&[&f.name]),
        Ast::CreateSequence { name, .. } => CREATE_SEQUENCE.with(&[name]),
        Ast::CreateType { name, .. } => CREATE_TYPE.with(&[name]),
        Ast::CreateExtension(e) => CREATE_EXTENSION.with(&[&e.name]),
        Ast::CreateSchema { schema_name, .. } => CREATE_SCHEMA.with(&[schema_name]),
        Ast::AlterType(t) => match &t.operation {
            AlterTypeOperation::AddValue(v) => ENUM_ADD_VALUE.with(&[&t.name, &v.value]),
            op => ALTER_TYPE.with(&[&t.name, op]),
        },
        Ast::Comment { object_name, .. } => COMMENT_ON.with(&[object_name]),
        Ast::Grant(_) => GRANT.with(&[]),
        Ast::Revoke(_) => REVOKE.with(&[]),
        Ast::Insert(i) => INSERT.with(&[&i.table]),
        Ast::Update(u) => UPDATE.with(&[&u.table]),
        Ast::Delete(d) => {
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
            DELETE.with(&[&names(from)])
        }
        Ast::Truncate(t) => TRUNCATE.with(&[&names(&t.table_names)]),
        Ast::Set(_) => SESSION_SETTING.with(&[&shorten(&ast.to_string())]),
        other => unknown(other),
    }
}

/// An ALTER TABLE takes its worst operation's verdict (the first one of that class).
fn alter_table(t: &AlterTable, new_tables: &mut HashSet<String>) -> Verdict {
    let key = table_key(&t.name);
    let is_new = new_tables.contains(&key);
    let mut worst: Option<Verdict> = None;
    for op in &t.operations {
        if let AlterTableOperation::RenameTable { table_name } = op
            && new_tables.remove(&key)
        {
            let (RenameTableNameKind::As(to) | RenameTableNameKind::To(to)) = table_name;
            new_tables.insert(table_key(to));
        }
        let v = alter_operation(&t.name, op, is_new);
        if worst.as_ref().is_none_or(|w| v.rule.class > w.rule.class) {
            worst = Some(v);
        }
    }
    worst.unwrap_or_else(|| unknown(t))
}

fn alter_operation(table: &ObjectName, op: &AlterTableOperation, is_new: bool) -> Verdict {
    use AlterColumnOperation as Col;
    use AlterTableOperation as Op;
    match op {
        Op::DropColumn { column_names, .. } => DROP_COLUMN.with(&[table, &names(column_names)]),
        Op::DropConstraint { name, .. } => DROP_CONSTRAINT.with(&[table, name]),
        Op::DropPrimaryKey { .. } | Op::DropForeignKey { .. } | Op::DropIndex { .. } => {
            DROP_CONSTRAINT.with(&[table, &format!("({op})")])
        }
        Op::RenameColumn {
            old_column_name,
            new_column_name,
        } => RENAME_COLUMN.with(&[table, old_column_name, new_column_name]),
        Op::RenameTable {
            table_name: RenameTableNameKind::As(to) | RenameTableNameKind::To(to),
        } => RENAME_TABLE.with(&[table, to]),
        _ if is_new => NEW_TABLE.with(&[table]),
        Op::AddColumn { column_def, .. } => add_column(table, column_def),
        Op::AddConstraint {
            constraint,
            not_valid,
        } => add_constraint(table, constraint, *not_valid),
        Op::ValidateConstraint { name } => VALIDATE_CONSTRAINT.with(&[table, name]),
        Op::AlterColumn { column_name: c, op } => match op {
            Col::SetNotNull => SET_NOT_NULL.with(&[table, c]),
            Col::DropNotNull => DROP_NOT_NULL.with(&[table, c]),
            Col::SetDefault { value } => SET_DEFAULT.with(&[table, c, value]),
            Col::DropDefault => DROP_DEFAULT.with(&[table, c]),
            Col::SetDataType { data_type, .. } => CHANGE_COLUMN_TYPE.with(&[table, c, data_type]),
            _ => unknown(format!("ALTER TABLE {table} ALTER COLUMN {c} {op}")),
        },
        _ => unknown(format!("ALTER TABLE {table} {op}")),
    }
}

/// ADD COLUMN, checked from what rewrites or fails on existing rows to what is harmless.
fn add_column(table: &ObjectName, def: &ColumnDef) -> Verdict {
    let (c, ty) = (&def.name, &def.data_type);
    let options = || def.options.iter().map(|o| &o.option);
    let default = options().find_map(|o| match o {
        ColumnOption::Default(e) => Some(e),
        _ => None,
    });
    let not_null =
        options().any(|o| matches!(o, ColumnOption::NotNull | ColumnOption::PrimaryKey(_)));
    if is_serial(ty) {
        return ADD_COLUMN_SERIAL.with(&[table, c, ty]);
    }
    if options().any(|o| {
        matches!(
            o,
            ColumnOption::Generated { .. } | ColumnOption::Identity(_)
        )
    }) {
        return ADD_COLUMN_GENERATED.with(&[table, c]);
    }
    if let Some(e) = default.filter(|e| !is_constant(e)) {
        return ADD_COLUMN_VOLATILE_DEFAULT.with(&[table, c, e]);
    }
    if not_null && default.is_none() {
        return ADD_COLUMN_NOT_NULL_WITHOUT_DEFAULT.with(&[table, c]);
    }
    for o in options() {
        match o {
            ColumnOption::PrimaryKey(_) => return ADD_PRIMARY_KEY.with(&[table]),
            ColumnOption::Unique(_) => {
                return ADD_UNIQUE_CONSTRAINT.with(&[table, &format!(" on new column {c}")]);
            }
            ColumnOption::ForeignKey(_) | ColumnOption::Check(_) => {
                let what = format!("column {c} with a REFERENCES or CHECK constraint");
                return ADD_CONSTRAINT_WITHOUT_NOT_VALID.with(&[table, &what]);
            }
            _ => {}
        }
    }
    match default {
        Some(e) => ADD_COLUMN_CONSTANT_DEFAULT.with(&[table, c, e]),
        None => ADD_COLUMN_NULLABLE.with(&[table, c]),
    }
}

fn add_constraint(table: &ObjectName, constraint: &TableConstraint, not_valid: bool) -> Verdict {
    let what = match constraint {
        TableConstraint::ForeignKey(fk) => format!("foreign key{}", named(fk.name.as_ref())),
        TableConstraint::Check(ck) => format!("check constraint{}", named(ck.name.as_ref())),
        TableConstraint::PrimaryKey(_) | TableConstraint::PrimaryKeyUsingIndex(_) => {
            return ADD_PRIMARY_KEY.with(&[table]);
        }
        TableConstraint::Unique(u) => {
            return ADD_UNIQUE_CONSTRAINT.with(&[table, &named(u.name.as_ref())]);
        }
        TableConstraint::UniqueUsingIndex(u) => {
            return ADD_UNIQUE_USING_INDEX.with(&[table, &u.index_name]);
        }
        other => return unknown(format!("ALTER TABLE {table} ADD {other}")),
    };
    match not_valid {
        true => ADD_CONSTRAINT_NOT_VALID.with(&[table, &what]),
        false => ADD_CONSTRAINT_WITHOUT_NOT_VALID.with(&[table, &what]),
    }
}

fn is_serial(ty: &DataType) -> bool {
    match ty {
        DataType::Custom(name, _) => name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| SERIAL_TYPES.contains(&i.value.to_lowercase().as_str())),
        _ => false,
    }
}

/// Whether a default is a constant, or a call PostgreSQL evaluates once when the column is
/// added. Anything else (`random()`, `gen_random_uuid()`, `nextval(…)`, `2 + 2`) is taken as
/// volatile.
fn is_constant(e: &Expr) -> bool {
    match e {
        Expr::Value(_) | Expr::TypedString(_) => true,
        Expr::Cast { expr, .. } | Expr::Nested(expr) | Expr::UnaryOp { expr, .. } => {
            is_constant(expr)
        }
        Expr::Array(a) => a.elem.iter().all(is_constant),
        Expr::Function(f) => {
            let no_args = match &f.args {
                FunctionArguments::None => true,
                FunctionArguments::List(l) => l.args.is_empty(),
                FunctionArguments::Subquery(_) => false,
            };
            let name = f.name.0.last().and_then(|p| p.as_ident());
            no_args
                && name.is_some_and(|n| STABLE_FUNCTIONS.contains(&n.value.to_lowercase().as_str()))
        }
        _ => false,
    }
}
