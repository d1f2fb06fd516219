//! Listing cursors: the id of the last item of a page (ids are UUIDv7, so they sort by
//! creation time), opaque to clients.

use async_graphql::connection::{CursorType, OpaqueCursor};
use uuid::Uuid;

pub(crate) fn encode(id: Uuid) -> String {
    OpaqueCursor(id).encode_cursor()
}

/// The id in a cursor this API returned; `None` for anything else.
pub(crate) fn decode(cursor: &str) -> Option<Uuid> {
    OpaqueCursor::<Uuid>::decode_cursor(cursor)
        .ok()
        .map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = Uuid::now_v7();
        assert_eq!(decode(&encode(id)), Some(id));
        assert_eq!(decode("not a cursor"), None);
    }
}
