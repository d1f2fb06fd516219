//! Real-world migration statements (Rails, Django, Prisma, pgroll, pg_dump) and what they are.

use std::collections::HashSet;

use rhone_migrate::{Class, ClassifyError, RULES, classify, classify_all};

const E: Class = Class::Expand;
const C: Class = Class::Contract;

/// (statement, class, rule); each is classified alone, against an existing database.
const CASES: &[(&str, Class, &str)] = &[
    // Creating things the old artifact does not know of.
    (
        r#"CREATE TABLE "users" ("id" bigserial primary key, "email" character varying NOT NULL, "created_at" timestamp(6) NOT NULL, "updated_at" timestamp(6) NOT NULL)"#,
        E,
        "create-table",
    ),
    (
        "CREATE TABLE IF NOT EXISTS public.audit_log (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), payload jsonb NOT NULL)",
        E,
        "create-table",
    ),
    (
        r#"CREATE TABLE "Post" ("id" SERIAL NOT NULL, "title" TEXT NOT NULL, "authorId" INTEGER, CONSTRAINT "Post_pkey" PRIMARY KEY ("id"))"#,
        E,
        "create-table",
    ),
    (
        r#"CREATE INDEX CONCURRENTLY "polls_question_pub_date_idx" ON "polls_question" ("pub_date")"#,
        E,
        "create-index-concurrently",
    ),
    (
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS index_users_on_email ON public.users USING btree (lower(email))",
        E,
        "create-index-concurrently",
    ),
    (
        "CREATE VIEW active_users AS SELECT * FROM users WHERE deleted_at IS NULL",
        E,
        "create-view",
    ),
    (
        "CREATE MATERIALIZED VIEW daily_totals AS SELECT date_trunc('day', created_at) AS day, count(*) FROM orders GROUP BY 1",
        E,
        "create-view",
    ),
    (
        "CREATE SEQUENCE IF NOT EXISTS invoice_number_seq START 1000",
        E,
        "create-sequence",
    ),
    (
        r#"CREATE TYPE "Role" AS ENUM ('USER', 'ADMIN')"#,
        E,
        "create-type",
    ),
    (
        r#"CREATE EXTENSION IF NOT EXISTS "uuid-ossp""#,
        E,
        "create-extension",
    ),
    ("create schema if not exists reporting", E, "create-schema"),
    (
        "CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at = now(); RETURN NEW; END; $$",
        E,
        "create-function",
    ),
    // Adding columns.
    (
        r#"ALTER TABLE "users" ADD "nickname" character varying"#,
        E,
        "add-column-nullable",
    ),
    (
        r#"ALTER TABLE "User" ADD COLUMN "bio" TEXT"#,
        E,
        "add-column-nullable",
    ),
    (
        "alter table users add column if not exists admin boolean not null default false",
        E,
        "add-column-constant-default",
    ),
    (
        r#"ALTER TABLE "app_item" ADD COLUMN "count" integer DEFAULT 0 NOT NULL"#,
        E,
        "add-column-constant-default",
    ),
    (
        "ALTER TABLE accounts ADD COLUMN settings jsonb NOT NULL DEFAULT '{}'::jsonb",
        E,
        "add-column-constant-default",
    ),
    (
        "ALTER TABLE posts ADD COLUMN tag_ids integer[] NOT NULL DEFAULT '{}'::integer[]",
        E,
        "add-column-constant-default",
    ),
    (
        r#"ALTER TABLE "users" ADD "status" character varying DEFAULT 'active'::character varying NOT NULL"#,
        E,
        "add-column-constant-default",
    ),
    (
        "ALTER TABLE events ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()",
        E,
        "add-column-constant-default",
    ),
    (
        "ALTER TABLE events ADD COLUMN seen_at timestamptz DEFAULT CURRENT_TIMESTAMP",
        E,
        "add-column-constant-default",
    ),
    (
        r#"ALTER TABLE "User" ADD COLUMN "role" TEXT NOT NULL"#,
        C,
        "add-column-not-null-without-default",
    ),
    (
        "ALTER TABLE users ADD COLUMN public_id uuid NOT NULL DEFAULT gen_random_uuid()",
        C,
        "add-column-volatile-default",
    ),
    (
        r#"ALTER TABLE "account" ADD COLUMN "ab_group" integer DEFAULT random()"#,
        C,
        "add-column-volatile-default",
    ),
    (
        "ALTER TABLE orders ADD COLUMN legacy_id bigserial",
        C,
        "add-column-serial",
    ),
    (
        r#"ALTER TABLE "users" ADD COLUMN "id" serial PRIMARY KEY"#,
        C,
        "add-column-serial",
    ),
    (
        "ALTER TABLE items ADD COLUMN total numeric GENERATED ALWAYS AS (price * qty) STORED",
        C,
        "add-column-generated",
    ),
    (
        "ALTER TABLE users ADD COLUMN org_id bigint REFERENCES orgs (id)",
        C,
        "add-constraint-without-not-valid",
    ),
    // Changing columns.
    (
        r#"ALTER TABLE "users" ALTER COLUMN "email" SET NOT NULL"#,
        C,
        "set-not-null",
    ),
    (
        "ALTER TABLE users ALTER COLUMN nickname DROP NOT NULL",
        E,
        "drop-not-null",
    ),
    (
        r#"ALTER TABLE "users" ALTER COLUMN "admin" SET DEFAULT FALSE"#,
        E,
        "set-default",
    ),
    (
        "ALTER TABLE ONLY users ALTER COLUMN admin DROP DEFAULT",
        E,
        "drop-default",
    ),
    (
        r#"ALTER TABLE "app_item" ALTER COLUMN "price" TYPE numeric(12, 2) USING "price"::numeric(12, 2)"#,
        C,
        "change-column-type",
    ),
    (
        r#"ALTER TABLE "User" ALTER COLUMN "email" SET DATA TYPE VARCHAR(320)"#,
        C,
        "change-column-type",
    ),
    (
        r#"ALTER TABLE "users" RENAME COLUMN "name" TO "full_name""#,
        C,
        "rename-column",
    ),
    ("ALTER TABLE users RENAME TO accounts", C, "rename-table"),
    // Constraints.
    (
        r#"ALTER TABLE "posts" ADD CONSTRAINT "fk_rails_5b5ddfd518" FOREIGN KEY ("user_id") REFERENCES "users" ("id") NOT VALID"#,
        E,
        "add-constraint-not-valid",
    ),
    (
        r#"ALTER TABLE "posts" VALIDATE CONSTRAINT "fk_rails_5b5ddfd518""#,
        E,
        "validate-constraint",
    ),
    (
        r#"ALTER TABLE "Post" ADD CONSTRAINT "Post_authorId_fkey" FOREIGN KEY ("authorId") REFERENCES "User"("id") ON DELETE SET NULL ON UPDATE CASCADE"#,
        C,
        "add-constraint-without-not-valid",
    ),
    (
        "ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0)",
        C,
        "add-constraint-without-not-valid",
    ),
    (
        "ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0) NOT VALID",
        E,
        "add-constraint-not-valid",
    ),
    (
        "ALTER TABLE ONLY public.users ADD CONSTRAINT users_pkey PRIMARY KEY (id)",
        C,
        "add-primary-key",
    ),
    (
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email)",
        C,
        "add-unique-constraint",
    ),
    (
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_idx",
        E,
        "add-unique-using-index",
    ),
    (
        r#"ALTER TABLE "Post" DROP CONSTRAINT "Post_authorId_fkey""#,
        C,
        "drop-constraint",
    ),
    // Indexes on existing tables.
    (
        r#"CREATE UNIQUE INDEX "User_email_key" ON "User"("email")"#,
        C,
        "create-index-without-concurrently",
    ),
    (
        r#"CREATE INDEX "index_posts_on_user_id" ON "posts" ("user_id")"#,
        C,
        "create-index-without-concurrently",
    ),
    (
        "create index idx_orders_status on orders (status) where status <> 'done'",
        C,
        "create-index-without-concurrently",
    ),
    // Drops.
    (
        r#"ALTER TABLE "users" DROP COLUMN "legacy_flag""#,
        C,
        "drop-column",
    ),
    (
        "ALTER TABLE IF EXISTS users DROP COLUMN IF EXISTS legacy_flag CASCADE",
        C,
        "drop-column",
    ),
    (
        r#"DROP TABLE IF EXISTS "legacy_sessions" CASCADE"#,
        C,
        "drop-table",
    ),
    (r#"DROP INDEX "index_users_on_email""#, C, "drop-index"),
    (
        "DROP INDEX CONCURRENTLY IF EXISTS public.index_users_on_email",
        C,
        "drop-index",
    ),
    ("DROP VIEW active_users", C, "drop-view"),
    (r#"DROP TYPE IF EXISTS "Role""#, C, "drop-type"),
    ("DROP SCHEMA IF EXISTS reporting CASCADE", C, "drop-schema"),
    ("DROP SEQUENCE IF EXISTS orders_id_seq", C, "drop-sequence"),
    (r#"DROP EXTENSION IF EXISTS "uuid-ossp""#, C, "drop-object"),
    (
        "DROP FUNCTION IF EXISTS set_updated_at()",
        C,
        "drop-function",
    ),
    // Replacing what the old artifact uses.
    (
        "CREATE OR REPLACE VIEW active_users AS SELECT id, email FROM users",
        C,
        "replace-view",
    ),
    (
        "CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at = now(); RETURN NEW; END; $$",
        C,
        "replace-function",
    ),
    // Enums.
    (
        r#"ALTER TYPE "Role" ADD VALUE 'MODERATOR'"#,
        E,
        "enum-add-value",
    ),
    (
        r#"ALTER TYPE "Role" RENAME VALUE 'ADMIN' TO 'OWNER'"#,
        C,
        "alter-type",
    ),
    // Data and privileges.
    (
        r#"INSERT INTO "schema_migrations" ("version") VALUES ('20240101000000')"#,
        E,
        "insert",
    ),
    (
        "UPDATE users SET admin = false WHERE admin IS NULL",
        C,
        "update",
    ),
    ("DELETE FROM sessions WHERE expires_at < now()", C, "delete"),
    ("TRUNCATE TABLE sessions", C, "truncate"),
    (
        "COMMENT ON COLUMN users.email IS 'login address; unique'",
        E,
        "comment-on",
    ),
    (
        "GRANT SELECT ON TABLE reporting.daily_totals TO analyst",
        E,
        "grant",
    ),
    ("REVOKE ALL ON users FROM analyst", C, "revoke"),
    ("SET lock_timeout = '5s'", E, "session-setting"),
    // Several operations take the worst; anything else is not known to be safe.
    (
        "ALTER TABLE users ADD COLUMN a text, DROP COLUMN b",
        C,
        "drop-column",
    ),
    (
        "ALTER TABLE users ALTER COLUMN a DROP NOT NULL, ALTER COLUMN b SET NOT NULL",
        C,
        "set-not-null",
    ),
    (
        "ALTER TABLE users ADD COLUMN a text, ADD COLUMN b int DEFAULT 1",
        E,
        "add-column-nullable",
    ),
    (
        "CREATE TRIGGER users_updated_at BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION set_updated_at()",
        C,
        "not-known-safe",
    ),
    ("ALTER TABLE users OWNER TO app", C, "not-known-safe"),
];

#[test]
fn real_world_statements_are_classified_by_their_rule() {
    assert!(CASES.len() >= 45, "only {} cases", CASES.len());
    let mut mismatches = Vec::new();
    for (i, &(sql, class, rule)) in CASES.iter().enumerate() {
        match classify("case.sql", sql) {
            Ok(c) if c.statements.len() == 1 => {
                let s = &c.statements[0];
                if s.class != class || s.rule != rule {
                    mismatches.push(format!(
                        "#{i} {sql}\n    want {class:?} {rule}, got {:?} {} ({})",
                        s.class, s.rule, s.reason
                    ));
                } else if s.reason.is_empty() || s.sql != sql {
                    mismatches.push(format!(
                        "#{i} {sql}\n    sql {:?}, reason {:?}",
                        s.sql, s.reason
                    ));
                }
            }
            Ok(c) => mismatches.push(format!("#{i} {sql}\n    {} statements", c.statements.len())),
            Err(e) => mismatches.push(format!("#{i} {sql}\n    {e}")),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases wrong:\n{}",
        mismatches.len(),
        CASES.len(),
        mismatches.join("\n")
    );
}

#[test]
fn every_rule_is_exercised_and_decides_its_class() {
    let ids: HashSet<&str> = RULES.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), RULES.len(), "duplicate rule ids");
    // `new-table` needs an earlier CREATE TABLE: see the test below.
    let exercised: HashSet<&str> = CASES.iter().map(|c| c.2).chain(["new-table"]).collect();
    let missing: Vec<&str> = ids.difference(&exercised).copied().collect();
    assert!(missing.is_empty(), "rules no case exercises: {missing:?}");
    for &(sql, class, id) in CASES {
        let rule = RULES.iter().find(|r| r.id == id);
        assert_eq!(rule.map(|r| r.class), Some(class), "{id} ({sql})");
    }
}

#[test]
fn reasons_name_the_table_and_column() {
    let c = classify(
        "m.sql",
        r#"ALTER TABLE "User" ADD COLUMN "role" TEXT NOT NULL"#,
    )
    .expect("parses");
    let reason = &c.statements[0].reason;
    assert!(
        reason.contains(r#""User""#) && reason.contains(r#""role""#),
        "{reason}"
    );
}

#[test]
fn a_parse_error_names_file_line_and_column() {
    let sql = "CREATE TABLE a (id int);\n\nALTER TABLE a ADD COLUMN;\n";
    let err = classify("migrations/0002_x.sql", sql).expect_err("does not parse");
    let ClassifyError::Parse {
        file,
        line,
        column,
        message,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (file.as_str(), *line, *column),
        ("migrations/0002_x.sql", 3, 25)
    );
    assert!(
        !message.contains("Line") && message.contains("Expected"),
        "{message}"
    );
    assert_eq!(
        err.to_string(),
        format!("migrations/0002_x.sql:3:25: {message}")
    );
}

#[test]
fn a_missing_semicolon_is_a_parse_error_at_the_next_statement() {
    let err =
        classify("m.sql", "ALTER TABLE a DROP COLUMN b\nDROP TABLE c;").expect_err("no semicolon");
    assert!(
        matches!(
            &err,
            ClassifyError::Parse {
                line: 2,
                column: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_unterminated_string_is_a_tokenizer_error_with_its_position() {
    let err =
        classify("m.sql", "SELECT 1;\n  INSERT INTO t VALUES ('x);").expect_err("unterminated");
    assert!(
        matches!(&err, ClassifyError::Parse { line: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn transaction_control_is_refused() {
    let err = classify("m.sql", "BEGIN;\nCREATE TABLE a (id int);\nCOMMIT;").expect_err("BEGIN");
    assert_eq!(
        err,
        ClassifyError::Transaction {
            file: "m.sql".into(),
            line: 1,
            column: 1
        }
    );
    let err = classify("m.sql", "CREATE TABLE a (id int);\n  COMMIT;").expect_err("COMMIT");
    assert!(
        matches!(
            err,
            ClassifyError::Transaction {
                line: 2,
                column: 3,
                ..
            }
        ),
        "{err:?}"
    );
    for sql in ["SAVEPOINT before_backfill", "ROLLBACK", "START TRANSACTION"] {
        let err = classify("m.sql", sql).expect_err(sql);
        assert!(
            matches!(err, ClassifyError::Transaction { .. }),
            "{sql}: {err:?}"
        );
    }
}

#[test]
fn concurrently_must_be_alone_in_its_file() {
    let sql = "SET lock_timeout = '1s';\nCREATE INDEX CONCURRENTLY i ON t (a);";
    let err = classify("0003.sql", sql).expect_err("not alone");
    assert_eq!(
        err,
        ClassifyError::ConcurrentNotAlone {
            file: "0003.sql".into(),
            line: 2,
            column: 1
        }
    );
    assert!(err.to_string().starts_with("0003.sql:2:1: "), "{err}");
    let err = classify("m.sql", "DROP INDEX CONCURRENTLY i;\nDROP TABLE t;").expect_err("drop");
    assert!(
        matches!(err, ClassifyError::ConcurrentNotAlone { line: 1, .. }),
        "{err:?}"
    );

    let alone = classify(
        "m.sql",
        "-- build it online\nCREATE INDEX CONCURRENTLY i ON t (a);\n",
    )
    .expect("alone");
    assert!(alone.statements[0].concurrent);
    let alone = classify("m.sql", "DROP INDEX CONCURRENTLY i;").expect("alone");
    assert!(alone.statements[0].concurrent);
    assert_eq!(alone.class(), Class::Contract);
    let plain = classify("m.sql", "CREATE INDEX i ON t (a); DROP INDEX j;").expect("plain");
    assert!(plain.statements.iter().all(|s| !s.concurrent));
}

#[test]
fn an_index_on_a_table_created_earlier_in_the_set_is_expand() {
    let index = r#"CREATE INDEX "index_posts_on_user_id" ON public.posts ("user_id");"#;
    let files = vec![
        (
            "0001_posts.sql".to_string(),
            "CREATE TABLE posts (id bigint, user_id bigint);".to_string(),
        ),
        ("0002_index.sql".to_string(), index.to_string()),
    ];
    let all = classify_all(&files).expect("parses");
    let s = &all[1].statements[0];
    assert_eq!(
        (s.class, s.rule),
        (Class::Expand, "new-table"),
        "{}",
        s.reason
    );

    let alone = classify("0002_index.sql", index).expect("parses");
    let s = &alone.statements[0];
    assert_eq!(
        (s.class, s.rule),
        (Class::Contract, "create-index-without-concurrently")
    );

    // In the same file, and for other changes to the new table; a quoted name is another table.
    let same = classify(
        "m.sql",
        "CREATE TABLE Posts (id bigint);\nALTER TABLE posts ADD COLUMN title text NOT NULL;\nCREATE INDEX i ON \"Posts\" (id);",
    )
    .expect("parses");
    let got: Vec<_> = same.statements.iter().map(|s| (s.class, s.rule)).collect();
    assert_eq!(
        got,
        [
            (Class::Expand, "create-table"),
            (Class::Expand, "new-table"),
            (Class::Contract, "create-index-without-concurrently"),
        ]
    );
}

#[test]
fn statements_have_their_lines_columns_and_text() {
    let sql = "-- 0004: accounts\n\
               CREATE TABLE accounts (\n  id bigint,\n  note text DEFAULT 'a;b'\n);\n\n\
               \x20   /* a comment; with a semicolon */ ALTER TABLE users ADD COLUMN account_id bigint; DROP TABLE old;\n\
               CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n  SELECT 1;\n$$;\n\
               \tCOMMENT ON TABLE accounts IS 'é';";
    let c = classify("m.sql", sql).expect("parses");
    let got: Vec<_> = c
        .statements
        .iter()
        .map(|s| (s.line, s.column, s.sql.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                2,
                1,
                "CREATE TABLE accounts (\n  id bigint,\n  note text DEFAULT 'a;b'\n)"
            ),
            (7, 39, "ALTER TABLE users ADD COLUMN account_id bigint"),
            (7, 87, "DROP TABLE old"),
            (
                8,
                1,
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n  SELECT 1;\n$$"
            ),
            (11, 2, "COMMENT ON TABLE accounts IS 'é'"),
        ]
    );
}

#[test]
fn an_empty_or_comment_only_file_is_empty() {
    for sql in ["", "  \n", "-- nothing yet\n/* still nothing */\n", ";;"] {
        let err = classify("0005.sql", sql).expect_err(sql);
        assert_eq!(
            err,
            ClassifyError::Empty {
                file: "0005.sql".into()
            },
            "{sql:?}"
        );
    }
}

#[test]
fn long_statements_are_cut_to_200_characters() {
    let columns: Vec<String> = (0..60).map(|i| format!("column_{i} text")).collect();
    let sql = format!("CREATE TABLE wide ({})", columns.join(", "));
    let c = classify("m.sql", &sql).expect("parses");
    let text = &c.statements[0].sql;
    assert_eq!(text.chars().count(), 200);
    assert!(text.ends_with('…') && sql.starts_with(text.trim_end_matches('…')));
}

#[test]
fn a_file_is_as_bad_as_its_worst_statement_and_serializes_as_evidence() {
    let c = classify(
        "0006.sql",
        "ALTER TABLE users ADD COLUMN bio text;\nALTER TABLE users DROP COLUMN legacy;",
    )
    .expect("parses");
    assert_eq!(c.class(), Class::Contract);
    let contract: Vec<_> = c.contract().map(|s| s.rule).collect();
    assert_eq!(contract, ["drop-column"]);
    assert!(Class::Contract > Class::Expand);

    let json = serde_json::to_value(&c).expect("serializes");
    assert_eq!(json["file"], "0006.sql");
    assert_eq!(json["statements"][0]["class"], "expand");
    assert_eq!(json["statements"][1]["class"], "contract");
    assert_eq!(json["statements"][1]["rule"], "drop-column");
    assert_eq!(json["statements"][1]["line"], 2);
    let class: Class = serde_json::from_str("\"contract\"").expect("deserializes");
    assert_eq!(class, Class::Contract);

    let err = ClassifyError::Empty {
        file: "x.sql".into(),
    };
    let json = serde_json::to_string(&err).expect("serializes");
    assert_eq!(
        serde_json::from_str::<ClassifyError>(&json).expect("round trip"),
        err
    );

    let expand = classify(
        "m.sql",
        "CREATE TABLE t (id int); CREATE INDEX i ON t (id);",
    )
    .expect("parses");
    assert_eq!(expand.class(), Class::Expand);
    assert_eq!(expand.contract().count(), 0);
}
