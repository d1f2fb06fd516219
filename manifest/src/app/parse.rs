//! `rhone.toml` → [`AppManifest`]: one reader per section over the spanned TOML tree.

use std::ops::RangeInclusive;

use rhone_core::limits::{self, Limits};
use toml::de::DeTable;

use super::reader::{Diagnostics, Field, Problem, Table, syntax_problem};
use super::values::{RoutePattern, Service, SignaturePolicy, check_secret_name};
use super::values::{is_relative_path, is_url_path};
use super::*;

const SECTIONS: &[&str] = &[
    "build",
    "run",
    "assets",
    "state",
    "routes",
    "secrets",
    "services",
    "wake",
    "migrations",
];
const COMMAND: &str = "a non-empty command string, like \"python3 server.py\"";

pub(super) fn parse(text: &str) -> Result<AppManifest, Vec<Problem>> {
    let doc = DeTable::parse(text).map_err(|err| vec![syntax_problem(text, &err)])?;
    let mut diagnostics = Diagnostics::new(text);
    let d = &mut diagnostics;
    let root = Table::root(&doc);
    root.deny_unknown(d, SECTIONS, "section");

    let manifest = AppManifest {
        build: build(d, &root),
        run: run(d, &root),
        assets: assets(d, &root),
        state: state(d, &root),
        routes: routes(d, &root),
        secrets: secrets(d, &root),
        services: services(d, &root),
        wake: wake(d, &root),
        migrations: migrations(d, &root),
    };
    let problems = diagnostics.finish();
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(problems)
    }
}

fn build(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> BuildSection {
    let t = &root.table(d, "build", true);
    t.deny_unknown(
        d,
        &[
            "command",
            "output_dir",
            "timeout_secs",
            "max_log_bytes",
            "memory_mb",
            "cpu_millis",
            "max_pids",
        ],
        "field",
    );
    BuildSection {
        command: command(d, t),
        output_dir: path(d, t, "output_dir", "the repository").unwrap_or(DEFAULT_OUTPUT_DIR.into()),
        timeout_secs: int(d, t, "timeout_secs", 1..=7200).unwrap_or(DEFAULT_BUILD_TIMEOUT_SECS),
        max_log_bytes: int(d, t, "max_log_bytes", 1024..=(256 << 20))
            .unwrap_or(DEFAULT_MAX_LOG_BYTES),
        limits: sandbox(d, t, Limits::BUILD_DEFAULT),
    }
}

fn run(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> RunSection {
    let t = &root.table(d, "run", true);
    t.deny_unknown(
        d,
        &[
            "command",
            "port",
            "health_path",
            "readiness_timeout_secs",
            "memory_mb",
            "cpu_millis",
            "max_pids",
        ],
        "field",
    );
    let health_path = t.get("health_path").and_then(|f| {
        let expected = "a URL path starting with \"/\", like \"/healthz\"";
        let path = f.str(d, expected)?;
        if is_url_path(path) {
            Some(path.to_owned())
        } else {
            f.reject(d, expected)
        }
    });
    RunSection {
        command: command(d, t),
        port: int(d, t, "port", 1..=65535).unwrap_or(DEFAULT_PORT),
        health_path: health_path.unwrap_or(DEFAULT_HEALTH_PATH.into()),
        readiness_timeout_secs: int(d, t, "readiness_timeout_secs", 1..=3600)
            .unwrap_or(DEFAULT_READINESS_TIMEOUT_SECS),
        limits: sandbox(d, t, Limits::RUN_DEFAULT),
    }
}

fn assets(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> AssetsSection {
    let t = &root.table(d, "assets", false);
    t.deny_unknown(d, &["dir", "manifest"], "field");
    AssetsSection {
        dir: path(d, t, "dir", "the build output").unwrap_or(DEFAULT_ASSETS_DIR.into()),
        manifest: path(d, t, "manifest", "the build output")
            .unwrap_or(DEFAULT_ASSET_MANIFEST.into()),
    }
}

fn state(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> StateSection {
    let t = &root.table(d, "state", false);
    t.deny_unknown(d, &["schema"], "field");
    StateSection {
        schema: path(d, t, "schema", "the build output").unwrap_or(DEFAULT_STATE_SCHEMA.into()),
    }
}

fn routes(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> RoutesSection {
    let t = &root.table(d, "routes", false);
    t.deny_unknown(d, &["webhooks", "idempotent"], "field");
    let mut seen = Seen::default();
    let webhooks = match t.get("webhooks") {
        Some(f) => f.array(d, "an array of webhook tables"),
        None => Vec::new(),
    };
    let webhooks = webhooks
        .iter()
        .filter_map(|f| webhook(d, f, &mut seen))
        .collect();
    let idempotent = list(d, t, "idempotent", "route pattern", pattern);
    RoutesSection {
        webhooks,
        idempotent,
    }
}

fn webhook(d: &mut Diagnostics<'_>, f: &Field<'_, '_>, seen: &mut Seen) -> Option<WebhookRoute> {
    let example = "a table like { path = \"/webhooks/stripe\", signature = \"stripe\" }";
    let entry = f.table(d, example)?;
    entry.deny_unknown(d, &["path", "signature"], "field");
    let path = entry.required(d, "path", "a route pattern like \"/webhooks/stripe\"");
    let path = path.and_then(|f| {
        let pattern = pattern(d, &f)?;
        seen.first(d, &f, "webhook path", pattern.as_str())
            .then_some(pattern)
    });
    let expected = SignaturePolicy::expected();
    let signature = entry.required(d, "signature", &expected);
    let signature = signature.and_then(|f| one_of(d, &f, SignaturePolicy::from_name, &expected));
    Some(WebhookRoute {
        path: path?,
        signature: signature?,
    })
}

fn secrets(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> SecretsSection {
    let t = &root.table(d, "secrets", false);
    t.deny_unknown(d, &["required"], "field");
    let required = list(d, t, "required", "secret", |d, f| {
        let expected = "an environment variable name like \"STRIPE_API_KEY\"";
        let name = f.str(d, expected)?;
        match check_secret_name(name) {
            Ok(()) => Some(name.to_owned()),
            Err(expected) => f.reject(d, expected),
        }
    });
    SecretsSection { required }
}

fn services(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> ServicesSection {
    let t = &root.table(d, "services", false);
    t.deny_unknown(d, &["required"], "field");
    let expected = Service::expected();
    let required = list(d, t, "required", "service", |d, f| {
        one_of(d, f, Service::from_name, &expected)
    });
    ServicesSection { required }
}

fn wake(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> WakeSection {
    let t = &root.table(d, "wake", false);
    t.deny_unknown(d, &["budget_ms"], "field");
    WakeSection {
        budget_ms: int(d, t, "budget_ms", 100..=300_000).unwrap_or(DEFAULT_WAKE_BUDGET_MS),
    }
}

fn migrations(d: &mut Diagnostics<'_>, root: &Table<'_, '_>) -> MigrationsSection {
    let t = &root.table(d, "migrations", false);
    t.deny_unknown(d, &["dir"], "field");
    MigrationsSection {
        dir: path(d, t, "dir", "the build output"),
    }
}

fn command(d: &mut Diagnostics<'_>, t: &Table<'_, '_>) -> String {
    let field = t.required(d, "command", COMMAND);
    let command = field.and_then(|f| {
        let command = f.str(d, COMMAND)?;
        if command.trim().is_empty() {
            f.reject(d, COMMAND)
        } else {
            Some(command)
        }
    });
    command.unwrap_or_default().to_owned()
}

/// An optional integer in `range`, converted to the field's type (the range fits it).
fn int<T: TryFrom<i64>>(
    d: &mut Diagnostics<'_>,
    t: &Table<'_, '_>,
    key: &str,
    range: RangeInclusive<i64>,
) -> Option<T> {
    t.get(key)
        .and_then(|f| f.int(d, range))
        .and_then(|n| T::try_from(n).ok())
}

/// The sandbox fields of `[build]` or `[run]`, each in its [`limits`] range, else `default`'s.
fn sandbox(d: &mut Diagnostics<'_>, t: &Table<'_, '_>, default: Limits) -> Limits {
    let mut limit = |key: &str, range: RangeInclusive<u32>, default: u32| {
        let range = i64::from(*range.start())..=i64::from(*range.end());
        int(d, t, key, range).unwrap_or(default)
    };
    Limits {
        memory_mb: limit("memory_mb", limits::MEMORY_MB, default.memory_mb),
        cpu_millis: limit("cpu_millis", limits::CPU_MILLIS, default.cpu_millis),
        max_pids: limit("max_pids", limits::MAX_PIDS, default.max_pids),
    }
}

/// An optional relative path that stays inside `root`.
fn path(d: &mut Diagnostics<'_>, t: &Table<'_, '_>, key: &str, root: &str) -> Option<String> {
    let f = t.get(key)?;
    let expected = format!("a relative path inside {root}, with \"/\" separators and no \"..\"");
    let path = f.str(d, &expected)?;
    if is_relative_path(path) {
        Some(path.to_owned())
    } else {
        f.reject(d, &expected)
    }
}

fn pattern(d: &mut Diagnostics<'_>, f: &Field<'_, '_>) -> Option<RoutePattern> {
    let expected = "a route pattern like \"/webhooks/stripe\" or \"/actions/*\"";
    match RoutePattern::parse(f.str(d, expected)?) {
        Ok(pattern) => Some(pattern),
        Err(invalid) => f.reject(d, invalid.expected),
    }
}

/// A name from a closed set.
fn one_of<T>(
    d: &mut Diagnostics<'_>,
    f: &Field<'_, '_>,
    from_name: fn(&str) -> Option<T>,
    expected: &str,
) -> Option<T> {
    from_name(f.str(d, expected)?).or_else(|| f.reject(d, expected))
}

/// An optional array whose items are read by `item`; a repeated item is reported.
fn list<T>(
    d: &mut Diagnostics<'_>,
    t: &Table<'_, '_>,
    key: &str,
    what: &str,
    item: impl Fn(&mut Diagnostics<'_>, &Field<'_, '_>) -> Option<T>,
) -> Vec<T>
where
    T: ToString,
{
    let Some(field) = t.get(key) else {
        return Vec::new();
    };
    let mut seen = Seen::default();
    let mut items = Vec::new();
    for f in field.array(d, &format!("an array of {what}s")) {
        if let Some(value) = item(d, &f)
            && seen.first(d, &f, what, &value.to_string())
        {
            items.push(value);
        }
    }
    items
}

/// Values already listed, with the line of their first appearance.
#[derive(Default)]
struct Seen(Vec<(String, usize)>);

impl Seen {
    /// Whether `value` is new; a repeat is reported, naming the line of the first.
    fn first(
        &mut self,
        d: &mut Diagnostics<'_>,
        f: &Field<'_, '_>,
        what: &str,
        value: &str,
    ) -> bool {
        if let Some((_, line)) = self.0.iter().find(|(v, _)| v == value) {
            f.problem(
                d,
                format!("duplicate {what} {value:?}, already listed on line {line}"),
            );
            return false;
        }
        self.0.push((value.to_owned(), d.line_of(f.offset())));
        true
    }
}
