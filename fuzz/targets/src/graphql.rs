//! GraphQL requests as the API reads them: the body (at most 64 KiB) as one JSON request,
//! its document parsed by async-graphql, then validated under the API's depth and complexity
//! limits before anything runs.
//!
//! The API's own schema and its introspection check (`rhone_api::introspection`) are not
//! reachable without building the API (its DB and Temporal clients), so this target stands a
//! small schema of the same shape in front of the same limits: nested objects, and a list
//! whose cost is `first` times its selection, as the API's `buildLog` and `operations`.

use std::collections::HashSet;

use async_graphql::parser::parse_query;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};

/// The API's limits (`rhone_api::MAX_BODY_BYTES`, `graphql::MAX_DEPTH`, `MAX_COMPLEXITY`).
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_DEPTH: usize = 12;
const MAX_COMPLEXITY: usize = 1000;

struct Query;

#[Object]
impl Query {
    async fn node(&self) -> Node {
        Node
    }
}

struct Node;

#[Object]
impl Node {
    async fn id(&self) -> i32 {
        1
    }

    async fn name(&self) -> &str {
        "node"
    }

    async fn child(&self) -> Node {
        Node
    }

    /// Empty, but priced like the API's lists.
    #[graphql(complexity = "(first.clamp(1, 500) as usize) * child_complexity")]
    async fn children(&self, first: i32) -> Vec<Node> {
        let _ = first;
        Vec::new()
    }
}

/// Reads `data` as a request body the way `POST /graphql` does and runs it under the API's
/// limits. A document nested deeper than the depth limit, or a request that does not parse,
/// is answered with errors and no data; nothing panics and every answer serialises.
pub fn graphql(data: &[u8]) {
    if data.len() > MAX_BODY_BYTES {
        return;
    }
    let request: async_graphql::Request = match serde_json::from_slice(data) {
        Ok(request) => request,
        // The API answers 400 with the parser's message.
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let parsed = parse_query(&request.query);
    let too_deep = match &parsed {
        Ok(doc) => depth(doc) > MAX_DEPTH,
        Err(_) => false,
    };
    let schema = Schema::build(Query, EmptyMutation, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish();
    let response = futures::executor::block_on(schema.execute(request));
    serde_json::to_string(&response).expect("a response serialises");
    if parsed.is_err() || too_deep {
        assert!(
            !response.errors.is_empty(),
            "a document that does not parse or is too deep is refused"
        );
    }
}

/// How deep the document's deepest operation nests its fields, fragments expanded (each
/// fragment once per path: a cycle is refused by validation anyway).
fn depth(doc: &ExecutableDocument) -> usize {
    doc.operations
        .iter()
        .map(|(_, op)| set_depth(doc, &op.node.selection_set.node, &mut HashSet::new()))
        .max()
        .unwrap_or(0)
}

fn set_depth<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    seen: &mut HashSet<&'a str>,
) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(field) => 1 + set_depth(doc, &field.node.selection_set.node, seen),
            Selection::InlineFragment(fragment) => {
                set_depth(doc, &fragment.node.selection_set.node, seen)
            }
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                if !seen.insert(name) {
                    return 0;
                }
                let d = doc
                    .fragments
                    .get(&spread.node.fragment_name.node)
                    .map_or(0, |f| set_depth(doc, &f.node.selection_set.node, seen));
                seen.remove(name);
                d
            }
        })
        .max()
        .unwrap_or(0)
}
