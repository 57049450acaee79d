//! The hyper adapter for the Bookinfo apps: one loopback listener per workload, requests
//! turned into [`handlers`] calls, upstream calls made through the sidecar's outbound ports.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::catalog::{App, ReviewsVersion, Service, Upstreams};
use super::handlers::{self, ErrorBody, RatingsOutcome, Route};
use crate::http_client::{ClientError, HttpClient};

/// How long productpage waits for reviews or details.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long reviews waits for ratings: 10 s, as in Istio's Bookinfo. That it is longer than
/// productpage's wait for reviews is the sample's deliberate flaw, which Istio's fault-injection
/// task (`virtual-service-ratings-test-delay.yaml`, 7 s for jason) exposes: productpage gives up
/// on reviews first and the user sees reviews unavailable, not reviews without ratings.
const RATINGS_TIMEOUT: Duration = Duration::from_secs(10);

/// A Bookinfo workload serving on loopback.
#[derive(Debug)]
pub struct RunningApp {
    pub app: App,
    /// Where the app listens: its sidecar's `--app`.
    pub addr: SocketAddr,
    /// Fill in once the sidecar's outbound ports are known.
    pub upstreams: Arc<Upstreams>,
    task: JoinHandle<()>,
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `app` on `127.0.0.1:0` and serves it until `shutdown` is cancelled.
pub async fn bind(
    app: App,
    client: HttpClient,
    shutdown: CancellationToken,
) -> io::Result<RunningApp> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let upstreams = Arc::new(Upstreams::default());
    let state = Arc::new(AppState {
        app,
        workload: app.workload_name(),
        upstreams: Arc::clone(&upstreams),
        client,
    });
    let task = tokio::spawn(serve(listener, state, shutdown));
    Ok(RunningApp {
        app,
        addr,
        upstreams,
        task,
    })
}

#[derive(Debug)]
struct AppState {
    app: App,
    workload: String,
    upstreams: Arc<Upstreams>,
    client: HttpClient,
}

async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(workload = %state.workload, %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&state), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = respond(&state, &req).await;
    if let Ok(value) = HeaderValue::from_str(&state.workload) {
        // Lets a curl user see which workload answered without reading the body.
        response.headers_mut().insert("x-bookinfo-workload", value);
    }
    Ok(response)
}

async fn respond(state: &AppState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(StatusCode::METHOD_NOT_ALLOWED, &error("only GET is served"));
    }
    let Some(route) = Route::parse(req.uri().path()) else {
        return json(StatusCode::NOT_FOUND, &error("not found"));
    };
    let headers = req.headers();
    match (state.app, route) {
        (_, Route::Health) => json(
            StatusCode::OK,
            &serde_json::json!({"status": format!("{} is healthy", state.workload)}),
        ),
        (App::Details, Route::Details(id)) => json(StatusCode::OK, &handlers::details(id)),
        (App::Ratings, Route::Ratings(id)) => json(StatusCode::OK, &handlers::ratings(id)),
        (App::Reviews(version), Route::Reviews(id)) => reviews(state, version, id, headers).await,
        (App::Productpage, Route::Products) => json(StatusCode::OK, &handlers::products()),
        (App::Productpage, Route::Product(id)) => {
            match call::<handlers::Details>(
                state,
                Service::Details,
                &format!("/details/{id}"),
                headers,
                UPSTREAM_TIMEOUT,
            )
            .await
            {
                Ok(details) => json(StatusCode::OK, &details),
                Err(_) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &error(handlers::DETAILS_UNAVAILABLE),
                ),
            }
        }
        (App::Productpage, Route::ProductReviews(id)) => {
            match call::<handlers::Reviews>(
                state,
                Service::Reviews,
                &format!("/reviews/{id}"),
                headers,
                UPSTREAM_TIMEOUT,
            )
            .await
            {
                Ok(reviews) => json(StatusCode::OK, &handlers::product_reviews(id, reviews)),
                Err(_) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &error(handlers::REVIEWS_UNAVAILABLE),
                ),
            }
        }
        (App::Productpage, Route::ProductPage) => product_page(state, headers).await,
        _ => json(StatusCode::NOT_FOUND, &error("not found")),
    }
}

async fn reviews(
    state: &AppState,
    version: ReviewsVersion,
    id: u32,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    let outcome = if version.star_color().is_none() {
        RatingsOutcome::NotAsked
    } else {
        match call(
            state,
            Service::Ratings,
            &format!("/ratings/{id}"),
            headers,
            RATINGS_TIMEOUT,
        )
        .await
        {
            Ok(ratings) => RatingsOutcome::Answered(ratings),
            Err(_) => RatingsOutcome::Unavailable,
        }
    };
    json(
        StatusCode::OK,
        &handlers::reviews(id, version, &state.workload, &outcome),
    )
}

async fn product_page(state: &AppState, headers: &HeaderMap) -> Response<Full<Bytes>> {
    const PRODUCT: u32 = 0;
    let (details_path, reviews_path) =
        (format!("/details/{PRODUCT}"), format!("/reviews/{PRODUCT}"));
    let (details, reviews) = tokio::join!(
        call::<handlers::Details>(
            state,
            Service::Details,
            &details_path,
            headers,
            UPSTREAM_TIMEOUT
        ),
        call::<handlers::Reviews>(
            state,
            Service::Reviews,
            &reviews_path,
            headers,
            UPSTREAM_TIMEOUT
        ),
    );
    let user = headers.get("end-user").and_then(|v| v.to_str().ok());
    let html = handlers::product_page_html(details.ok().as_ref(), reviews.ok().as_ref(), user);
    let mut response = Response::new(Full::new(Bytes::from(html)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// Why an upstream call gave no usable answer. Each is logged once here, at debug: the
/// caller degrades its answer (as Bookinfo does) rather than failing.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("the sidecar's outbound port for {0:?} is not known yet")]
    NotReady(Service),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("undecodable answer: {0}")]
    Decode(#[from] serde_json::Error),
}

async fn call<T: DeserializeOwned>(
    state: &AppState,
    service: Service,
    path: &str,
    incoming: &HeaderMap,
    timeout: Duration,
) -> Result<T, UpstreamError> {
    let result = async {
        let addr = state
            .upstreams
            .get(service)
            .ok_or(UpstreamError::NotReady(service))?;
        let mut headers = handlers::forwarded_headers(incoming);
        if let Ok(host) = HeaderValue::from_str(&service.authority()) {
            headers.insert(header::HOST, host);
        }
        let reply = state.client.get(addr, path, &headers, timeout).await?;
        if !reply.status.is_success() {
            return Err(UpstreamError::Status(reply.status));
        }
        Ok(serde_json::from_slice(&reply.body)?)
    }
    .await;
    if let Err(err) = &result {
        tracing::debug!(workload = %state.workload, upstream = service.name(), path, %err, "upstream call failed");
    }
    result
}

fn error(message: &str) -> ErrorBody {
    ErrorBody {
        error: message.to_string(),
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    // Serializing these plain structs cannot fail; an empty object is a safe fallback anyway.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bookinfo::handlers::ProductReviews;

    async fn start(app: App, shutdown: &CancellationToken) -> RunningApp {
        bind(app, HttpClient::new(), shutdown.clone())
            .await
            .unwrap()
    }

    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
        let mut headers = HeaderMap::new();
        headers.insert("end-user", HeaderValue::from_static("jason"));
        let reply = HttpClient::new()
            .get(addr, path, &headers, Duration::from_secs(5))
            .await
            .unwrap();
        (
            reply.status,
            String::from_utf8_lossy(&reply.body).into_owned(),
        )
    }

    #[tokio::test]
    async fn productpage_reaches_reviews_and_ratings() {
        let shutdown = CancellationToken::new();
        let productpage = start(App::Productpage, &shutdown).await;
        let reviews = start(App::Reviews(ReviewsVersion::V3), &shutdown).await;
        let ratings = start(App::Ratings, &shutdown).await;
        let details = start(App::Details, &shutdown).await;
        // Wired straight to each other, as if each sidecar were a plain pipe.
        productpage.upstreams.set(Service::Reviews, reviews.addr);
        productpage.upstreams.set(Service::Details, details.addr);
        reviews.upstreams.set(Service::Ratings, ratings.addr);

        let (status, body) = get(productpage.addr, "/api/v1/products/0/reviews").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: ProductReviews = serde_json::from_str(&body).unwrap();
        assert_eq!(answer.reviews_version, "v3");
        assert!(answer.ratings_available);
        assert_eq!(
            answer.reviews[0].rating.as_ref().unwrap().color.as_deref(),
            Some("red")
        );

        let (status, body) = get(productpage.addr, "/api/v1/products/0").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"ISBN-10\""));
        let (status, page) = get(productpage.addr, "/productpage").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("Signed in as <b>jason</b>") && page.contains("color:red"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn missing_upstreams_degrade_as_bookinfo_does() {
        let shutdown = CancellationToken::new();
        let reviews = start(App::Reviews(ReviewsVersion::V2), &shutdown).await;
        // No ratings address: reviews still answers, without ratings.
        let (status, body) = get(reviews.addr, "/reviews/1").await;
        assert_eq!(status, StatusCode::OK);
        let answer: handlers::Reviews = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (answer.id, answer.version.as_str(), answer.ratings_available),
            (1, "v2", false)
        );

        let productpage = start(App::Productpage, &shutdown).await;
        let (status, body) = get(productpage.addr, "/api/v1/products/0/reviews").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(handlers::REVIEWS_UNAVAILABLE));
        let (status, page) = get(productpage.addr, "/productpage").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains(handlers::DETAILS_UNAVAILABLE));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn productpage_forwards_user_and_trace_headers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A stand-in for reviews that records the request head it got.
        let fake = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let fake_addr = fake.local_addr().unwrap();
        let recorded = tokio::spawn(async move {
            let (mut stream, _) = fake.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed mid-request");
                head.extend_from_slice(&buf[..n]);
            }
            let body = serde_json::to_vec(&handlers::reviews(
                0,
                ReviewsVersion::V1,
                "fake",
                &RatingsOutcome::NotAsked,
            ))
            .unwrap();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            stream.write_all(&body).await.unwrap();
            String::from_utf8(head).unwrap().to_ascii_lowercase()
        });
        let shutdown = CancellationToken::new();
        let productpage = start(App::Productpage, &shutdown).await;
        productpage.upstreams.set(Service::Reviews, fake_addr);

        let mut headers = HeaderMap::new();
        headers.insert("end-user", HeaderValue::from_static("jason"));
        headers.insert("x-request-id", HeaderValue::from_static("req-1"));
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        headers.insert("cookie", HeaderValue::from_static("session=secret"));
        let reply = HttpClient::new()
            .get(
                productpage.addr,
                "/api/v1/products/0/reviews",
                &headers,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let head = recorded.await.unwrap();
        assert!(head.starts_with("get /reviews/0 http/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: reviews:9080\r\n"), "{head}");
        assert!(head.contains("\r\nend-user: jason\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: req-1\r\n"), "{head}");
        assert!(
            head.contains(
                "\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
            ),
            "{head}"
        );
        assert!(!head.contains("cookie"), "{head}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn each_app_serves_only_its_routes() {
        let shutdown = CancellationToken::new();
        let ratings = start(App::Ratings, &shutdown).await;
        let (status, body) = get(ratings.addr, "/ratings/0").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"Reviewer1\":5"));
        assert_eq!(
            get(ratings.addr, "/details/0").await.0,
            StatusCode::NOT_FOUND
        );
        let reply = HttpClient::new()
            .get(
                ratings.addr,
                "/nope",
                &HeaderMap::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.headers["x-bookinfo-workload"], "ratings-v1");
        let (status, body) = get(ratings.addr, "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("ratings-v1 is healthy"));
        shutdown.cancel();
    }
}
