//! The metrics endpoint over real TCP: only `GET /metrics` answers 200, with the versioned
//! content type and the `# HELP` of described metrics.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::time::Duration;

use schemas::runtime::{METRICS_CONTENT_TYPE, prometheus_recorder, serve_metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends one HTTP/1.1 request and returns the status code, the head (lower-cased) and the body.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the metrics endpoint answers within 10 s");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_owned())
}

#[tokio::test]
async fn only_get_metrics_answers_with_help_and_the_versioned_content_type() {
    let recorder = prometheus_recorder().unwrap();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_counter!("annals_test_things_total", "Things seen by the test.");
        metrics::counter!("annals_test_things_total").increment(3);
        metrics::describe_histogram!(
            "annals_test_duration_seconds",
            metrics::Unit::Seconds,
            "How long the test's thing took."
        );
        metrics::histogram!("annals_test_duration_seconds").record(0.02);
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_metrics(listener, handle));

    let (status, head, body) = request(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains(&format!("content-type: {METRICS_CONTENT_TYPE}")),
        "{head}"
    );
    assert!(
        body.contains("# HELP annals_test_things_total Things seen by the test."),
        "{body}"
    );
    assert!(body.contains("annals_test_things_total 3"), "{body}");
    assert!(
        body.contains("# HELP annals_test_duration_seconds How long the test's thing took."),
        "{body}"
    );
    // The shared buckets apply to `*_seconds`.
    assert!(
        body.contains("annals_test_duration_seconds_bucket{le=\"0.025\"} 1"),
        "{body}"
    );

    for path in ["/x", "/", "/metrics/extra", "/metricsx"] {
        let (status, _, _) = request(addr, "GET", path).await;
        assert_eq!(status, 404, "GET {path}");
    }
    for method in ["POST", "PUT", "DELETE"] {
        let (status, head, _) = request(addr, method, "/metrics").await;
        assert_eq!(status, 405, "{method} /metrics");
        assert!(head.contains("allow: get"), "{head}");
    }
    server.abort();
}

/// The one test of this binary that installs the process-wide recorder.
#[tokio::test]
async fn install_prometheus_serves_the_global_recorder_on_its_address() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    schemas::runtime::install_prometheus(addr).unwrap();
    metrics::describe_gauge!(
        "annals_test_global_gauge",
        "A gauge of the global recorder."
    );
    metrics::gauge!("annals_test_global_gauge").set(7.0);
    let (status, head, body) = request(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains(&format!("content-type: {METRICS_CONTENT_TYPE}")),
        "{head}"
    );
    assert!(
        body.contains("# HELP annals_test_global_gauge A gauge of the global recorder."),
        "{body}"
    );
    assert!(body.contains("annals_test_global_gauge 7"), "{body}");
    assert_eq!(request(addr, "GET", "/x").await.0, 404);
    assert_eq!(request(addr, "POST", "/metrics").await.0, 405);
    // A second recorder cannot be installed: the error says so instead of serving nothing.
    let other = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(schemas::runtime::install_prometheus(other).is_err());
}
