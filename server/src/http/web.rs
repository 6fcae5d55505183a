//! The demo's web build, served from [`Config::web_dir`](crate::Config::web_dir): `index.html`
//! at `/` (behind a token, see [`super::demo_page`]) and the files beside it at `/demo/{file}`.
//!
//! **Boundary:** a requested name is one path segment of `[A-Za-z0-9._-]`, not starting with a
//! dot, with a known extension; anything else is 404 before the file system is touched, so no
//! request reaches outside the folder.

use std::path::{Path, PathBuf};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The content type of a file the demo folder may serve, by extension.
fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "map" | "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => return None,
    })
}

/// `dir/name` when `name` is a plain file name the demo folder may serve.
pub(crate) fn resolve(dir: &Path, name: &str) -> Option<(PathBuf, &'static str)> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !plain {
        return None;
    }
    Some((dir.join(name), content_type(name)?))
}

/// Reads and answers one file of the demo folder; 404 when it is not there.
pub(crate) async fn serve_file(dir: &Path, name: &str) -> Response {
    let Some((path, content_type)) = resolve(dir, name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut response = bytes.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // Rebuilt in place by `cargo xtask build-web`: revalidate instead of caching stale code.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read a demo file");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_with_known_extensions_resolve() {
        let dir = Path::new("/srv/demo");
        assert_eq!(
            resolve(dir, "demo.js"),
            Some((dir.join("demo.js"), "text/javascript; charset=utf-8"))
        );
        assert!(resolve(dir, "lattice_client_bg.wasm").is_some());
        for bad in [
            "",
            ".env",
            "../secret.js",
            "a/b.js",
            "..",
            "x.exe",
            "noext",
            "a\\b.js",
            "%2e%2e.js",
        ] {
            assert_eq!(resolve(dir, bad), None, "{bad:?}");
        }
    }
}
