//! Recognises documents that only introspect the schema (`__schema`, `__type`,
//! `__typename` at the top of every operation), which GraphiQL sends before the user has
//! pasted a token. Those run without authentication; everything else needs a token.

use std::collections::HashSet;

use async_graphql::parser::{
    parse_query,
    types::{ExecutableDocument, OperationType, Selection, SelectionSet},
};

/// Whether `query` parses and every operation in it is a query selecting introspection
/// fields only. A document that does not parse is not introspection: it is refused like
/// any other unauthenticated request.
pub(crate) fn is_introspection_only(query: &str) -> bool {
    let Ok(doc) = parse_query(query) else {
        return false;
    };
    doc.operations.iter().all(|(_, op)| {
        op.node.ty == OperationType::Query
            && only_meta_fields(&doc, &op.node.selection_set.node, &mut HashSet::new())
    })
}

fn only_meta_fields<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    seen: &mut HashSet<&'a str>,
) -> bool {
    set.items.iter().all(|item| match &item.node {
        Selection::Field(field) => {
            matches!(
                field.node.name.node.as_str(),
                "__schema" | "__type" | "__typename"
            )
        }
        Selection::InlineFragment(fragment) => {
            only_meta_fields(doc, &fragment.node.selection_set.node, seen)
        }
        Selection::FragmentSpread(spread) => {
            let name = spread.node.fragment_name.node.as_str();
            // A fragment seen before on this path is a cycle; validation refuses it later.
            seen.insert(name)
                && doc
                    .fragments
                    .get(&spread.node.fragment_name.node)
                    .is_some_and(|f| only_meta_fields(doc, &f.node.selection_set.node, seen))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, expected: bool) {
        assert_eq!(is_introspection_only(query), expected, "{query}");
    }

    #[test]
    fn documents() {
        check("{ __schema { types { name } } }", true);
        check(
            "query Q { __typename __type(name: \"Query\") { name } }",
            true,
        );
        check(
            "query Q { ...F } fragment F on Query { __schema { queryType { name } } }",
            true,
        );
        check("{ ... on Query { __typename } }", true);
        check("{ workspaces { id } }", false);
        check("{ __typename workspaces { id } }", false);
        check(
            "query Q { ...F } fragment F on Query { me { actor } }",
            false,
        );
        check("query Q { ...F } fragment F on Query { ...F }", false);
        check("mutation { __typename }", false);
        check("query A { __typename } query B { me { actor } }", false);
        check("{ not closed", false);
    }
}
