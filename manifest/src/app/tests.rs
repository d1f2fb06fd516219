//! Table tests for `rhone.toml`: a valid file renders as its normalized TOML (defaults filled
//! in), an invalid one as its error lines.

use rhone_core::Limits;

use super::{AppManifest, RoutePattern};

#[track_caller]
fn check(input: &str, expected: &str) {
    let actual = match AppManifest::parse(input) {
        Ok(manifest) => toml::to_string(&manifest).expect("a manifest serializes to TOML"),
        Err(err) => err.to_string(),
    };
    assert_eq!(
        actual.trim(),
        expected.trim(),
        "\n--- actual ---\n{actual}\n"
    );
}

const MINIMAL: &str = r#"
[build]
command = "make"

[run]
command = "./server"
"#;

#[test]
fn minimal_file_gets_every_default() {
    check(
        MINIMAL,
        r#"
[build]
command = "make"
output_dir = "dist"
timeout_secs = 600
max_log_bytes = 1048576
memory_mb = 2048
cpu_millis = 2000
max_pids = 1024

[run]
command = "./server"
port = 8080
health_path = "/healthz"
readiness_timeout_secs = 60
memory_mb = 512
cpu_millis = 1000
max_pids = 256

[assets]
dir = "public"
manifest = "manifest.json"

[state]
schema = "vango_state_schema.json"

[routes]
webhooks = []
idempotent = []

[secrets]
required = []

[services]
required = []

[wake]
budget_ms = 10000

[migrations]
"#,
    );
}

#[test]
fn every_field_set() {
    check(
        r#"
[build]
command = "vango build"
output_dir = "out/dist"
timeout_secs = 900
max_log_bytes = 0x200000
memory_mb = 4096
cpu_millis = 4000
max_pids = 2048

[run]
command = "./server"
port = 3000
health_path = "/api/health"
readiness_timeout_secs = 30
memory_mb = 256
cpu_millis = 500
max_pids = 64

[assets]
dir = "static"
manifest = "assets.json"

[state]
schema = "state/schema.json"

[routes]
webhooks = [
  { path = "/webhooks/stripe", signature = "stripe" },
  { path = "/hooks/*", signature = "standard_webhooks" },
]
idempotent = ["/actions/*", "/api/orders"]

[secrets]
required = ["STRIPE_API_KEY", "_INTERNAL", "DB_URL2"]

[services]
required = ["session_store", "idempotency", "object_storage"]

[wake]
budget_ms = 2500

[migrations]
dir = "migrations"
"#,
        r#"
[build]
command = "vango build"
output_dir = "out/dist"
timeout_secs = 900
max_log_bytes = 2097152
memory_mb = 4096
cpu_millis = 4000
max_pids = 2048

[run]
command = "./server"
port = 3000
health_path = "/api/health"
readiness_timeout_secs = 30
memory_mb = 256
cpu_millis = 500
max_pids = 64

[assets]
dir = "static"
manifest = "assets.json"

[state]
schema = "state/schema.json"

[routes]
idempotent = ["/actions/*", "/api/orders"]

[[routes.webhooks]]
path = "/webhooks/stripe"
signature = "stripe"

[[routes.webhooks]]
path = "/hooks/*"
signature = "standard_webhooks"

[secrets]
required = ["STRIPE_API_KEY", "_INTERNAL", "DB_URL2"]

[services]
required = ["session_store", "idempotency", "object_storage"]

[wake]
budget_ms = 2500

[migrations]
dir = "migrations"
"#,
    );
}

#[test]
fn webhooks_as_array_of_tables_and_dotted_keys() {
    check(
        r#"
build.command = "make"
run = { command = "./server", port = 9000 }

[[routes.webhooks]]
path = "/webhooks/github"
signature = "github"

[[routes.webhooks]]
path = "/webhooks/unsigned"
signature = "none"
"#,
        r#"
[build]
command = "make"
output_dir = "dist"
timeout_secs = 600
max_log_bytes = 1048576
memory_mb = 2048
cpu_millis = 2000
max_pids = 1024

[run]
command = "./server"
port = 9000
health_path = "/healthz"
readiness_timeout_secs = 60
memory_mb = 512
cpu_millis = 1000
max_pids = 256

[assets]
dir = "public"
manifest = "manifest.json"

[state]
schema = "vango_state_schema.json"

[routes]
idempotent = []

[[routes.webhooks]]
path = "/webhooks/github"
signature = "github"

[[routes.webhooks]]
path = "/webhooks/unsigned"
signature = "none"

[secrets]
required = []

[services]
required = []

[wake]
budget_ms = 10000

[migrations]
"#,
    );
}

#[test]
fn sandbox_limits_default_per_section_and_parse_at_their_bounds() {
    let app = AppManifest::parse(MINIMAL).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(app.build.limits, Limits::BUILD_DEFAULT);
    assert_eq!(app.run.limits, Limits::RUN_DEFAULT);

    let text = "[build]\ncommand = \"make\"\nmemory_mb = 65536\n\
                [run]\ncommand = \"./server\"\ncpu_millis = 10\nmax_pids = 32768\n";
    let app = AppManifest::parse(text).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        app.build.limits,
        Limits {
            memory_mb: 65_536,
            ..Limits::BUILD_DEFAULT
        }
    );
    assert_eq!(
        app.run.limits,
        Limits {
            cpu_millis: 10,
            max_pids: 32_768,
            ..Limits::RUN_DEFAULT
        }
    );
}

#[test]
fn malformed_files_name_the_field_line_and_expectation() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "wrong type",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\nport = \"eighty\"\n",
            r#"rhone.toml:5:8: run.port: expected an integer between 1 and 65535, found "eighty""#,
        ),
        (
            "out of range",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\nport = 70000\n",
            "rhone.toml:5:8: run.port: expected an integer between 1 and 65535, found 70000",
        ),
        (
            "float for an integer",
            "[build]\ncommand = \"make\"\ntimeout_secs = 1.5\n[run]\ncommand = \"./server\"\n",
            "rhone.toml:3:16: build.timeout_secs: expected an integer between 1 and 7200, found 1.5",
        ),
        (
            "wake budget out of bounds",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[wake]\nbudget_ms = 50\n",
            "rhone.toml:6:13: wake.budget_ms: expected an integer between 100 and 300000, found 50",
        ),
        (
            "run memory out of range",
            "[build]\ncommand = \"make\"\n\n[run]\ncommand = \"./server\"\nport = 3000\nhealth_path = \"/up\"\n\nmemory_mb = 999999\n",
            "rhone.toml:9:13: run.memory_mb: expected an integer between 16 and 65536, found 999999",
        ),
        (
            "build pids out of range",
            "[build]\ncommand = \"make\"\nmax_pids = 4\n[run]\ncommand = \"./server\"\n",
            "rhone.toml:3:12: build.max_pids: expected an integer between 8 and 32768, found 4",
        ),
        (
            "cpu quota as a string",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\ncpu_millis = \"1000m\"\n",
            r#"rhone.toml:5:14: run.cpu_millis: expected an integer between 10 and 64000, found "1000m""#,
        ),
        (
            "unknown key in build",
            "[build]\ncommand = \"make\"\nmemory = 512\n[run]\ncommand = \"./server\"\n",
            "rhone.toml:3:1: build.memory: unknown field, expected one of: command, output_dir, timeout_secs, max_log_bytes, memory_mb, cpu_millis, max_pids",
        ),
        (
            "unknown key",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\nprot = 8080\n",
            "rhone.toml:5:1: run.prot: unknown field, expected one of: command, port, health_path, readiness_timeout_secs, memory_mb, cpu_millis, max_pids",
        ),
        (
            "unknown section",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[deploy]\nregion = \"eu\"\n",
            "rhone.toml:5:2: deploy: unknown section, expected one of: build, run, assets, state, routes, secrets, services, wake, migrations",
        ),
        (
            "missing section",
            "[build]\ncommand = \"make\"\n",
            "rhone.toml:1:1: run: missing section [run]",
        ),
        (
            "missing required field",
            "[build]\noutput_dir = \"dist\"\n\n[run]\ncommand = \"./server\"\n",
            r#"rhone.toml:1:1: build.command: missing required field, expected a non-empty command string, like "python3 server.py""#,
        ),
        (
            "empty command",
            "[build]\ncommand = \"  \"\n[run]\ncommand = \"./server\"\n",
            r#"rhone.toml:2:11: build.command: expected a non-empty command string, like "python3 server.py", found "  ""#,
        ),
        (
            "section of the wrong type",
            "run = \"./server\"\n[build]\ncommand = \"make\"\n",
            r#"rhone.toml:1:7: run: expected a table [run], found "./server""#,
        ),
        (
            "bad secret name",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[secrets]\nrequired = [\"stripe-key\"]\n",
            r#"rhone.toml:6:13: secrets.required[0]: expected an environment variable name of uppercase letters, digits and _, not starting with a digit (like "STRIPE_API_KEY"), found "stripe-key""#,
        ),
        (
            "reserved secret name",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[secrets]\nrequired = [\"OK\", \"RHONE_TOKEN\"]\n",
            r#"rhone.toml:6:19: secrets.required[1]: expected a name other than PORT and RHONE_*, which Rhone sets itself, found "RHONE_TOKEN""#,
        ),
        (
            "duplicate secret",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[secrets]\nrequired = [\n  \"DB_URL\",\n  \"DB_URL\",\n]\n",
            r#"rhone.toml:8:3: secrets.required[1]: duplicate secret "DB_URL", already listed on line 7"#,
        ),
        (
            "unknown service",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[services]\nrequired = [\"redis\"]\n",
            r#"rhone.toml:6:13: services.required[0]: expected one of "session_store", "broadcast", "idempotency", "cache", "queue", "object_storage", found "redis""#,
        ),
        (
            "services not an array",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[services]\nrequired = \"cache\"\n",
            r#"rhone.toml:6:12: services.required: expected an array of services, found "cache""#,
        ),
        (
            "route pattern without a leading slash",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[routes]\nidempotent = [\"actions/*\"]\n",
            r#"rhone.toml:6:15: routes.idempotent[0]: expected a path pattern starting with "/", like "/webhooks/stripe", found "actions/*""#,
        ),
        (
            "wildcard inside a pattern",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[routes]\nidempotent = [\"/a/*/b\"]\n",
            r#"rhone.toml:6:15: routes.idempotent[0]: expected a path pattern with "*" only as its whole last segment, like "/actions/*", found "/a/*/b""#,
        ),
        (
            "pattern under the Vango runtime",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[[routes.webhooks]]\npath = \"/_vango/live\"\nsignature = \"none\"\n",
            r#"rhone.toml:6:8: routes.webhooks[0].path: expected a path pattern outside /_vango/, which belongs to the Vango runtime, found "/_vango/live""#,
        ),
        (
            "duplicate webhook path",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[routes]\nwebhooks = [\n  { path = \"/webhooks/stripe\", signature = \"stripe\" },\n  { path = \"/webhooks/stripe\", signature = \"none\" },\n]\n",
            r#"rhone.toml:8:12: routes.webhooks[1].path: duplicate webhook path "/webhooks/stripe", already listed on line 7"#,
        ),
        (
            "unknown signature policy",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[routes]\nwebhooks = [{ path = \"/webhooks/pay\", signature = \"paypal\" }]\n",
            r#"rhone.toml:6:51: routes.webhooks[0].signature: expected one of "stripe", "github", "slack", "standard_webhooks", "none", found "paypal""#,
        ),
        (
            "webhook without signature",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[[routes.webhooks]]\npath = \"/webhooks/stripe\"\n",
            r#"rhone.toml:5:1: routes.webhooks[0].signature: missing required field, expected one of "stripe", "github", "slack", "standard_webhooks", "none""#,
        ),
        (
            "webhook given as a bare path",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[routes]\nwebhooks = [\"/webhooks/stripe\"]\n",
            r#"rhone.toml:6:13: routes.webhooks[0]: expected a table like { path = "/webhooks/stripe", signature = "stripe" }, found "/webhooks/stripe""#,
        ),
        (
            "unknown key in a webhook",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[[routes.webhooks]]\npath = \"/webhooks/stripe\"\nsignature = \"stripe\"\nsecret = \"STRIPE_WEBHOOK_SECRET\"\n",
            "rhone.toml:8:1: routes.webhooks[0].secret: unknown field, expected one of: path, signature",
        ),
        (
            "path escaping the output",
            "[build]\ncommand = \"make\"\noutput_dir = \"../out\"\n[run]\ncommand = \"./server\"\n",
            r#"rhone.toml:3:14: build.output_dir: expected a relative path inside the repository, with "/" separators and no "..", found "../out""#,
        ),
        (
            "absolute migrations dir",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n[migrations]\ndir = \"/migrations\"\n",
            r#"rhone.toml:6:7: migrations.dir: expected a relative path inside the build output, with "/" separators and no "..", found "/migrations""#,
        ),
        (
            "health path without a slash",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\nhealth_path = \"healthz\"\n",
            r#"rhone.toml:5:15: run.health_path: expected a URL path starting with "/", like "/healthz", found "healthz""#,
        ),
        (
            "TOML syntax error: unquoted string",
            "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\nport = eighty\n",
            "rhone.toml:5:8: run.port: invalid TOML: string values must be quoted, expected literal string",
        ),
        (
            "TOML syntax error: unclosed header",
            "[build]\ncommand = \"make\"\n[run\ncommand = \"./server\"\n",
            "rhone.toml:3:5: run: invalid TOML: unclosed table, expected `]`",
        ),
        (
            "TOML syntax error: duplicate key",
            "[build]\ncommand = \"make\"\ncommand = \"make all\"\n[run]\ncommand = \"./server\"\n",
            "rhone.toml:3:1: build.command: invalid TOML: duplicate key",
        ),
        (
            "every sandbox problem at once",
            "[build]\ncommand = \"make\"\nmax_pids = 40000\nmemory_mb = 8\n[run]\ncommand = \"./server\"\nmemory_mb = 999999\ncpu_millis = 0\n",
            r#"
rhone.toml:3:12: build.max_pids: expected an integer between 8 and 32768, found 40000
rhone.toml:4:13: build.memory_mb: expected an integer between 16 and 65536, found 8
rhone.toml:7:13: run.memory_mb: expected an integer between 16 and 65536, found 999999
rhone.toml:8:14: run.cpu_millis: expected an integer between 10 and 64000, found 0
"#,
        ),
        (
            "every problem at once, in file order",
            "[build]\ntimeout_secs = 0\n[run]\ncommand = \"./server\"\nport = 0\n[services]\nrequired = [\"cache\", \"mail\"]\n",
            r#"
rhone.toml:1:1: build.command: missing required field, expected a non-empty command string, like "python3 server.py"
rhone.toml:2:16: build.timeout_secs: expected an integer between 1 and 7200, found 0
rhone.toml:5:8: run.port: expected an integer between 1 and 65535, found 0
rhone.toml:7:22: services.required[1]: expected one of "session_store", "broadcast", "idempotency", "cache", "queue", "object_storage", found "mail"
"#,
        ),
    ];
    let mut failures = Vec::new();
    for (name, input, expected) in cases {
        let actual = match AppManifest::parse(input) {
            Ok(_) => "<valid>".to_owned(),
            Err(err) => err.to_string(),
        };
        if actual.trim() != expected.trim() {
            failures.push(format!(
                "{name}:\n  expected: {}\n  actual:   {actual}",
                expected.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn route_patterns_match_exact_paths_and_prefixes() {
    let cases = [
        ("/webhooks/stripe", "/webhooks/stripe", true),
        ("/webhooks/stripe", "/webhooks/stripe/x", false),
        ("/actions/*", "/actions/increment", true),
        ("/actions/*", "/actions/a/b", true),
        ("/actions/*", "/actions/", false),
        ("/actions/*", "/actions", false),
        ("/actions/*", "/actionsx/y", false),
        ("/*", "/anything", true),
        ("/", "/", true),
    ];
    for (pattern, path, expected) in cases {
        let pattern = RoutePattern::parse(pattern).expect("the table's patterns are valid");
        assert_eq!(pattern.matches(path), expected, "{pattern} vs {path}");
    }
}
