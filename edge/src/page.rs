//! The edge's own answers: a short human HTML page with a status, and nothing internal in it.

use hyper::{
    Response, StatusCode,
    header::{CONTENT_TYPE, HeaderValue},
};

use crate::body::Body;

/// A small HTML page titled `title` that says `text`, answered with `status`.
pub(crate) fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let body = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{t}</title></head>\
         <body style=\"font-family:system-ui;max-width:40rem;margin:4rem auto\">\
         <h1>{t}</h1><p>{x}</p><p><small>Rhone edge · {code}</small></p></body></html>",
        t = escape(title),
        x = escape(text),
        code = status.as_u16()
    );
    answer(status, "text/html; charset=utf-8", body)
}

/// A response of `status` with `body` of type `content_type`.
pub(crate) fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<hyper::body::Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
