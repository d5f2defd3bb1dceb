//! Path-prefix routes: on the outbound listener and on a service's own listener, the longest
//! matching prefix names the service before the Host (or the listener's service) does; `strip`
//! removes the prefix from the path the instance sees. Over HTTP/1.1 and h2c.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::external::free_port;
use support::{get, static_service, within, TestProxy, Upstream};

const LIMIT: Duration = Duration::from_secs(30);

/// `/headers` answers with the request's fields; any other path echoes the (empty) body — so a
/// non-empty answer proves which path reached the instance.
async fn setup() -> (TestProxy, Upstream, Upstream, std::net::SocketAddr) {
    let shop = Upstream::start("shop").await;
    let users = Upstream::start("users").await;
    let own: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let yaml = format!(
        "routes:\n  - {{prefix: /api/, service: users}}\n  - {{prefix: /api/shop/, service: shop, strip: true}}\nservices:\n{}{}    listen: \"{own}\"\n    routes:\n      - {{prefix: /to-shop, service: shop, strip: true}}\n",
        static_service("shop", &[(shop.addr, 1)]),
        static_service("users", &[(users.addr, 1)]),
    );
    (TestProxy::start(&yaml).await, shop, users, own)
}

#[tokio::test]
async fn prefixes_route_before_the_host_longest_first_with_and_without_strip() {
    within(LIMIT, async {
        let (proxy, _shop, _users, own) = setup().await;
        let url = proxy.url();
        // The longest prefix wins; stripped, the instance sees /headers and answers with them.
        let got = get(&format!("{url}/api/shop/headers"), &[("host", "nobody")])
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.header("x-instance")),
            (200, "shop"),
            "{}",
            got.text()
        );
        assert!(
            got.text().contains("host: nobody"),
            "stripped to /headers: {}",
            got.text()
        );
        // Not stripped: the instance sees /api/headers, and echoes an empty body.
        let got = get(&format!("{url}/api/headers"), &[("host", "shop")])
            .await
            .unwrap();
        assert_eq!((got.status, got.header("x-instance")), (200, "users"));
        assert_eq!(got.text(), "");
        // No prefix matches: the Host routes.
        let got = get(&format!("{url}/headers"), &[("host", "shop")])
            .await
            .unwrap();
        assert_eq!((got.status, got.header("x-instance")), (200, "shop"));
        // A service's own listener: its routes first, then its own service.
        let got = get(&format!("http://{own}/to-shop"), &[]).await.unwrap();
        assert_eq!((got.status, got.header("x-instance")), (200, "shop"));
        let got = get(&format!("http://{own}/to-shop/headers"), &[])
            .await
            .unwrap();
        assert!(
            got.text().contains("host:"),
            "stripped to /headers: {}",
            got.text()
        );
        let got = get(&format!("http://{own}/elsewhere"), &[]).await.unwrap();
        assert_eq!((got.status, got.header("x-instance")), (200, "users"));
    })
    .await;
}

#[tokio::test]
async fn prefixes_route_h2c_requests_too() {
    within(LIMIT, async {
        let (proxy, _shop, _users, _own) = setup().await;
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let req = Request::get(format!("{}/api/shop/headers", proxy.url()))
            .header("host", "nobody")
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-instance"], "shop");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("host:"),
            "stripped to /headers: {body:?}"
        );
    })
    .await;
}
