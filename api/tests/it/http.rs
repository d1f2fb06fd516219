//! The HTTP surface: health, GraphiQL, open introspection, the checked-in schema, and the
//! limits on body size, depth and complexity.

use anyhow::Result;
use serde_json::json;

use crate::harness::{Api, error_of};

/// GraphiQL's introspection query (graphql-js 16 `getIntrospectionQuery()`), 13 levels deep.
const GRAPHIQL_INTROSPECTION: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name } } } } } } }
}
"#;

#[test]
fn checked_in_schema_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let code = rhone_api::sdl();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &code).expect("writing api/schema.graphql");
        return;
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == code,
        "api/schema.graphql differs from the schema the code builds.\n\
         If the change is intended, regenerate it with\n\
         \n    UPDATE_SCHEMA=1 cargo test -p rhone-api --test it checked_in_schema\n\n\
         and review the diff."
    );
}

#[tokio::test]
async fn health_graphiql_and_open_introspection() -> Result<()> {
    let api = Api::start("health_graphiql_and_open_introspection").await?;
    let http = reqwest::Client::new();

    let health = http.get(format!("{}/healthz", api.url)).send().await?;
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.text().await?, "ok");

    let page = http.get(format!("{}/graphql", api.url)).send().await?;
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await?.to_lowercase().contains("graphiql"));

    // GraphiQL introspects before anyone has pasted a token.
    let (status, schema) = api
        .anonymous()
        .post(json!({ "query": GRAPHIQL_INTROSPECTION }))
        .await?;
    assert_eq!(status, 200, "{schema}");
    assert!(schema.get("errors").is_none(), "{schema}");
    assert_eq!(schema["data"]["__schema"]["queryType"]["name"], "Query");
    assert_eq!(
        schema["data"]["__schema"]["mutationType"]["name"],
        "Mutation"
    );
    Ok(())
}

#[tokio::test]
async fn oversize_deep_and_complex_queries_are_refused() -> Result<()> {
    let api = Api::start("oversize_deep_and_complex_queries_are_refused").await?;
    let admin = api.admin().await?;
    let before = api.counts().await?;

    // Too big: refused before parsing, with the limit named.
    let padding = " ".repeat(rhone_api::MAX_BODY_BYTES);
    let query =
        format!("mutation {{ createWorkspace(name: \"big\") {{ workspace {{ id }} }} }}{padding}");
    let (status, response) = admin.post(json!({ "query": query })).await?;
    assert_eq!(status, 413);
    let (code, message) = error_of(&response)?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(message.contains("65536-byte limit"), "{message}");

    // Too deep: data and introspection mixed get the ordinary limit of 12.
    let of_types = "ofType { ".repeat(9) + "name" + &" }".repeat(9);
    let deep = format!(
        "{{ me {{ actor }} __schema {{ types {{ fields {{ type {{ {of_types} }} }} }} }} }}"
    );
    let (code, message) = admin.error(&deep, json!({})).await?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        message.contains("nested too deep: the limit is 12"),
        "{message}"
    );

    // Too complex: 600 aliased `me { actor }` are 1200 fields.
    let wide: String = (0..600).map(|i| format!("a{i}: me {{ actor }} ")).collect();
    let (code, message) = admin.error(&format!("{{ {wide} }}"), json!({})).await?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        message.contains("too complex: the limit is 1000"),
        "{message}"
    );

    // A list costs what it may return: three `buildLog(first: 500)` are 1500 chunks.
    let logs: String = (0..3)
        .map(|i| {
            format!(
                "l{i}: buildLog(operationId: \"{}\", first: 500) {{ seq }} ",
                uuid::Uuid::nil()
            )
        })
        .collect();
    let (code, message) = admin.error(&format!("{{ {logs} }}"), json!({})).await?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        message.contains("too complex: the limit is 1000"),
        "{message}"
    );
    let pages: String = (0..11)
        .map(|i| {
            format!(
                "o{i}: operations(workspaceId: \"{}\", first: 100) {{ nodes {{ id }} }} ",
                uuid::Uuid::nil()
            )
        })
        .collect();
    let (code, message) = admin.error(&format!("{{ {pages} }}"), json!({})).await?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        message.contains("too complex: the limit is 1000"),
        "{message}"
    );

    // Not GraphQL at all.
    let (status, response) = admin.post(json!([1, 2])).await?;
    assert_eq!(
        (status, error_of(&response)?.0.as_str()),
        (400, "INVALID_ARGUMENT")
    );

    assert_eq!(
        api.counts().await?,
        before,
        "refused requests write nothing"
    );
    Ok(())
}
