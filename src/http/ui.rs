//! The admin web UI: the static files of `web/`, embedded in the binary,
//! served at `/` (the page) and `/ui/…` (its scripts, styles and images).
//! The page talks to the REST API only; a strict Content-Security-Policy
//! keeps it from loading or sending anything anywhere else.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

/// The files of `web/`.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

/// Nothing but this origin: no inline script, no outside fetches.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds `/` and `/ui/{file}`.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index)).route("/ui/{file:.*}", web::get().to(asset));
}

async fn index() -> HttpResponse {
    serve("index.html")
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    serve(&file)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

fn serve(name: &str) -> HttpResponse {
    let Some(file) = Assets::get(name) else {
        return HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body(format!("no file {name:?} in the web UI"));
    };
    HttpResponse::Ok()
        .content_type(content_type(name))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]))))
        .body(file.data.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};

    #[actix_rt::test]
    async fn the_page_and_its_files_are_embedded_with_a_strict_policy() {
        let app = test::init_service(App::new().configure(config)).await;
        let res = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
        assert_eq!(res.status(), 200);
        let csp = res.headers().get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap().to_owned();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
        let page = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
        assert!(page.contains("/ui/app.js") && page.contains("/ui/app.css"), "{page}");
        for (file, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
            let res =
                test::call_service(&app, test::TestRequest::get().uri(&format!("/ui/{file}")).to_request())
                    .await;
            assert_eq!(res.status(), 200, "{file}");
            assert!(res.headers().get(header::CONTENT_TYPE).unwrap().to_str().unwrap().starts_with(kind));
        }
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/ui/../Cargo.toml").to_request()).await;
        assert_eq!(res.status(), 404);
    }
}
