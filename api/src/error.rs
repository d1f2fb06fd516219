//! The API's error type and the one place that maps errors to the stable `extensions.code`
//! every GraphQL error carries. Internal errors are logged here and answered with a generic
//! message, so no SQL, path or Temporal detail reaches a client.

use std::error::Error as StdError;

use async_graphql::{ErrorExtensionValues, Response, ServerError};
use rhone_schema::SchemaError;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The `extensions.code` of a GraphQL error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No token, or a token that is unknown or revoked.
    Unauthenticated,
    /// The caller can see the object but its role does not allow the action.
    Forbidden,
    /// The object does not exist, or the caller has no access to its workspace.
    NotFound,
    /// An argument breaks a rule (name, bounds, page size), or the query itself is refused
    /// (syntax, validation, depth, complexity, size).
    InvalidArgument,
    /// A name is taken, or the object is in a state that does not allow the action.
    Conflict,
    /// A service the API depends on (Temporal) cannot be reached; try again later.
    Unavailable,
    /// Anything else; logged on the server, never detailed to the client.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::Conflict => "CONFLICT",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }
}

/// An error of the API boundary.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "authentication required: send `Authorization: Bearer <token>` with a valid, unrevoked Rhone token"
    )]
    Unauthenticated,
    #[error(
        "the token expired at {0}; create a new one (`rhone tokens create`, or the createToken mutation with another token)"
    )]
    TokenExpired(chrono::DateTime<chrono::Utc>),
    #[error("the token was revoked; use another one")]
    TokenRevoked,
    #[error("{0}")]
    Forbidden(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{service} is unavailable; try again later")]
    Unavailable {
        service: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("control database error")]
    Database(#[source] SchemaError),
    #[error("internal error while {context}")]
    Internal {
        context: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

impl ApiError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
        }
    }

    pub(crate) fn internal(context: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Internal {
            context,
            source: source.into(),
        }
    }

    /// The one mapping from an error to its code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated | Self::TokenExpired(_) | Self::TokenRevoked => {
                ErrorCode::Unauthenticated
            }
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Unavailable { .. } => ErrorCode::Unavailable,
            Self::Database(SchemaError::NotFound { .. }) => ErrorCode::NotFound,
            Self::Database(SchemaError::Conflict { .. }) => ErrorCode::Conflict,
            Self::Database(_) | Self::Internal { .. } | Self::Serve(_) => ErrorCode::Internal,
        }
    }

    /// The message a client sees: the error itself, except for internal errors, which are
    /// logged with their cause chain and answered generically.
    fn public_message(&self) -> String {
        match (self.code(), self) {
            (ErrorCode::Internal, _) => {
                tracing::error!(error = %chain(self), "internal error");
                "internal error; the server log has the details".to_owned()
            }
            // The database's own description of a violated key names tables and columns.
            (ErrorCode::Conflict, Self::Database(_)) => "the object already exists".to_owned(),
            (ErrorCode::Unavailable, _) => {
                tracing::warn!(error = %chain(self), "dependency unavailable");
                self.to_string()
            }
            _ => self.to_string(),
        }
    }

    /// The error as a GraphQL error with its `extensions.code`.
    pub fn to_graphql(&self) -> async_graphql::Error {
        let mut extensions = ErrorExtensionValues::default();
        extensions.set("code", self.code().as_str());
        async_graphql::Error {
            message: self.public_message(),
            source: None,
            extensions: Some(extensions),
        }
    }

    /// A whole GraphQL response carrying only this error (for refusals before execution).
    pub(crate) fn to_response(&self) -> Response {
        let err = self.to_graphql();
        let mut server_error = ServerError::new(err.message, None);
        server_error.extensions = err.extensions;
        Response::from_errors(vec![server_error])
    }
}

impl From<SchemaError> for ApiError {
    fn from(err: SchemaError) -> Self {
        match err {
            SchemaError::NotFound { what, id } => Self::NotFound { what, id },
            other => Self::Database(other),
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        SchemaError::from(err).into()
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(err: ApiError) -> Self {
        err.to_graphql()
    }
}

/// Gives every error of a response a code: errors that async-graphql raised itself (syntax,
/// validation, depth and complexity limits, bad argument values) are the client's, so they
/// are `INVALID_ARGUMENT`; the depth and complexity refusals also name the limit.
pub(crate) fn classify_response(response: &mut Response, max_depth: usize, max_complexity: usize) {
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_some() {
            continue;
        }
        extensions.set("code", ErrorCode::InvalidArgument.as_str());
        if error.message == "Query is nested too deep." {
            error.message = format!("query is nested too deep: the limit is {max_depth} levels");
        } else if error.message == "Query is too complex." {
            error.message = format!("query is too complex: the limit is {max_complexity}");
        }
    }
}

/// `err: cause: cause …`, for the log.
fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(err: ApiError, code: &str, message_contains: &str) {
        let gql = err.to_graphql();
        let got = gql
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .map(|v| v.to_string());
        assert_eq!(got.as_deref(), Some(format!("\"{code}\"").as_str()));
        assert!(gql.message.contains(message_contains), "{}", gql.message);
    }

    #[test]
    fn codes_and_messages() {
        check(ApiError::Unauthenticated, "UNAUTHENTICATED", "Bearer");
        check(
            ApiError::not_found("project", "p1"),
            "NOT_FOUND",
            "project p1 not found",
        );
        check(
            ApiError::invalid("name", "too long"),
            "INVALID_ARGUMENT",
            "invalid name: too long",
        );
        check(ApiError::Conflict("taken".into()), "CONFLICT", "taken");
        let db = SchemaError::Conflict {
            what: "UNIQUE constraint failed: projects.name".into(),
        };
        check(ApiError::from(db), "CONFLICT", "already exists");
        let secret = ApiError::internal("reading", std::io::Error::other("/etc/secret path"));
        let gql = secret.to_graphql();
        assert!(!gql.message.contains("secret"), "{}", gql.message);
        check(secret, "INTERNAL", "internal error");
    }
}
