//! The Consul double's own rules (see `support/consul.rs`), each checked over HTTP as a Go
//! client meets it: registration and its validation, checks starting critical and `?passing`,
//! blocking queries, ACL tokens, fault knobs. Its clock (TTL, reaper) and the checks it runs are
//! in `consul_double_clock.rs`; what waypost does against it in `consul.rs` and
//! `consul_failures.rs`.

mod support;

use std::time::Duration;

use http::Request;
use serde_json::Value;
use support::consul::{ConsulDouble, Rights};
use support::*;

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until the double has received a request whose path and query contain `query`.
async fn arrived(c: &ConsulDouble, query: &str) {
    eventually(SETTLE, || async {
        c.requests()
            .iter()
            .any(|r| r.path_and_query.contains(query))
    })
    .await;
}

/// `method url` with `body` and an optional `X-Consul-Token`.
async fn call(method: &str, url: &str, token: Option<&str>, body: &str) -> Got {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("x-consul-token", t);
    }
    send(&client(), b.body(full(body.to_string())).unwrap())
        .await
        .unwrap()
}

fn json(got: &Got) -> Value {
    serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{e}: {}", got.text()))
}

const TTL_SVC: &str = r#"{"ID":"shop-1","Name":"shop","Address":"10.0.0.7","Port":8080,"Tags":["zone:a"],"Weights":{"Passing":5,"Warning":1},"Check":{"CheckID":"shop-ttl","TTL":"10s","DeregisterCriticalServiceAfter":"1m"}}"#;

#[tokio::test]
async fn registration_is_validated_as_consul_words_it() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let url = format!("http://{}/v1/agent/service/register", c.addr());
        for (body, status, message) in [
            ("{", 400, "Request decode failed"),
            (
                r#"{"Name":"s","Check":{"TTL":"soon"}}"#,
                400,
                "Request decode failed: time: invalid duration \"soon\"",
            ),
            (r#"{"Address":"10.0.0.1"}"#, 400, "Missing service name"),
            (
                r#"{"Name":"s","Address":"0.0.0.0"}"#,
                400,
                "Invalid service address",
            ),
            (
                r#"{"Name":"s","Address":"::"}"#,
                400,
                "Invalid service address",
            ),
            (
                r#"{"Name":"s","Weights":{"Passing":0,"Warning":1}}"#,
                400,
                "Invalid Weights: Passing must be greater than 0",
            ),
            (
                r#"{"Name":"s","Weights":{"Passing":1,"Warning":-1}}"#,
                400,
                "Invalid Weights: Warning must be greater or equal than 0",
            ),
            (
                r#"{"Name":"s","Weights":{"Passing":70000,"Warning":1}}"#,
                400,
                "Invalid Weights: DNS Weight must be between 0 and 65535",
            ),
            (
                r#"{"Name":"s","Check":{"TTL":"10s","Interval":"5s"}}"#,
                400,
                "Invalid check: Interval and TTL cannot both be specified",
            ),
            (
                r#"{"Name":"s","Check":{"TCP":"127.0.0.1:1"}}"#,
                400,
                "Invalid check: Interval must be > 0",
            ),
            (
                r#"{"Name":"s","Check":{"DeregisterCriticalServiceAfter":"1m"}}"#,
                400,
                "Invalid check: TTL must be > 0 for TTL checks",
            ),
            (
                r#"{"Name":"s","Check":{"TTL":"10s","Status":"ok"}}"#,
                400,
                "Status for checks must 'passing', 'warning', 'critical'",
            ),
        ] {
            let got = call("PUT", &url, None, body).await;
            assert_eq!(got.status, status, "{body}: {}", got.text());
            assert!(
                got.text().starts_with(message),
                "{body}: {:?} should start with {message:?}",
                got.text()
            );
        }
        assert!(c.service_ids().is_empty(), "nothing refused was registered");
        // Snake case is accepted; ID defaults to Name, Weights to {1, 1}.
        let ok = call(
            "PUT",
            &url,
            None,
            r#"{"name":"plain","address":"10.0.0.1","port":80}"#,
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.text());
        assert!(ok.body.is_empty());
        let svc = c.service("plain").expect("ID defaults to Name");
        assert_eq!(
            svc["Weights"],
            serde_json::json!({"Passing": 1, "Warning": 1})
        );
        assert_eq!(
            (svc["Tags"].clone(), svc["Meta"].clone()),
            (Value::Array(vec![]), serde_json::json!({})),
            "never null"
        );
        // Wrong method, unknown path.
        assert_eq!(call("GET", &url, None, "").await.status, 405);
        assert_eq!(
            call("GET", &format!("http://{}/v1/kv/x", c.addr()), None, "")
                .await
                .status,
            404
        );
    })
    .await
}

#[tokio::test]
async fn checks_start_critical_and_passing_hides_them_until_the_first_pass() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let base = format!("http://{}", c.addr());
        assert_eq!(
            call(
                "PUT",
                &format!("{base}/v1/agent/service/register"),
                None,
                TTL_SVC
            )
            .await
            .status,
            200
        );
        assert_eq!(c.check_status("shop-ttl").as_deref(), Some("critical"));
        let health = |q: &'static str| {
            let base = base.clone();
            async move {
                call(
                    "GET",
                    &format!("{base}/v1/health/service/shop{q}"),
                    None,
                    "",
                )
                .await
            }
        };
        // `?passing` with no value, =1, =true all mean true; the unfiltered read has it.
        for q in ["?passing", "?passing=1", "?passing=true", "?passing=T"] {
            assert_eq!(
                json(&health(q).await),
                serde_json::json!([]),
                "{q}: [] never null"
            );
        }
        assert_eq!(health("?passing=maybe").await.status, 400);
        assert_eq!(
            health("?passing=maybe").await.text(),
            "Invalid value for ?passing"
        );
        let all = json(&health("?passing=0").await);
        assert_eq!(all[0]["Service"]["ID"], "shop-1");
        assert_eq!(
            all[0]["Checks"][0]["CheckID"], "serfHealth",
            "the node's check is there too"
        );
        assert_eq!(all[0]["Checks"][1]["Status"], "critical");
        // The first pass makes it visible; tag filtering; the catalog never filters by health.
        assert_eq!(
            call(
                "PUT",
                &format!("{base}/v1/agent/check/pass/shop-ttl"),
                None,
                ""
            )
            .await
            .status,
            200
        );
        let passing = json(&health("?passing=1").await);
        assert_eq!(passing[0]["Service"]["Weights"]["Passing"], 5);
        assert_eq!(
            json(&health("?passing=1&tag=zone:a").await)
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            json(&health("?passing=1&tag=zone:b").await),
            serde_json::json!([])
        );
        c.set_status("shop-ttl", "warning");
        assert_eq!(json(&health("?passing=1").await), serde_json::json!([]));
        let catalog =
            json(&call("GET", &format!("{base}/v1/catalog/service/shop"), None, "").await);
        assert_eq!(
            (
                catalog[0]["ServiceID"].as_str(),
                catalog[0]["ServicePort"].as_i64()
            ),
            (Some("shop-1"), Some(8080))
        );
        // Update with a body; a bad status is refused; unknown IDs are 404 with Consul's words.
        let upd = call(
            "PUT",
            &format!("{base}/v1/agent/check/update/shop-ttl"),
            None,
            r#"{"Status":"passing","Output":"online"}"#,
        )
        .await;
        assert_eq!(upd.status, 200);
        assert_eq!(c.check_status("shop-ttl").as_deref(), Some("passing"));
        let bad = call(
            "PUT",
            &format!("{base}/v1/agent/check/update/shop-ttl"),
            None,
            r#"{"Status":"fine"}"#,
        )
        .await;
        assert_eq!(
            (bad.status, bad.text()),
            (400, "Invalid check status: 'fine'".into())
        );
        let unknown = call(
            "PUT",
            &format!("{base}/v1/agent/check/pass/service:nope"),
            None,
            "",
        )
        .await;
        assert_eq!(unknown.status, 404);
        assert!(
            unknown
                .text()
                .starts_with("Unknown check ID \"service:nope\""),
            "{}",
            unknown.text()
        );
        let svc = call("GET", &format!("{base}/v1/agent/service/nope"), None, "").await;
        assert_eq!(
            (svc.status, svc.text()),
            (404, "unknown service ID: nope".into())
        );
        let dereg = call(
            "PUT",
            &format!("{base}/v1/agent/service/deregister/nope"),
            None,
            "",
        )
        .await;
        assert_eq!(dereg.status, 404);
        assert!(
            dereg.text().starts_with("Unknown service ID \"nope\""),
            "{}",
            dereg.text()
        );
        // Deregistering takes the checks along.
        assert_eq!(
            call(
                "PUT",
                &format!("{base}/v1/agent/service/deregister/shop-1"),
                None,
                ""
            )
            .await
            .status,
            200
        );
        assert_eq!(c.check_status("shop-ttl"), None);
    })
    .await
}

#[tokio::test]
async fn blocking_queries_headers_and_their_parameters() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let base = format!("http://{}/v1/health/service/shop", c.addr());
        let first = call("GET", &base, None, "").await;
        for h in [
            "x-consul-index",
            "x-consul-knownleader",
            "x-consul-lastcontact",
        ] {
            assert!(!first.header(h).is_empty(), "{h} missing");
        }
        assert_eq!(first.header("content-type"), "application/json");
        let index: u64 = first.header("x-consul-index").parse().unwrap();
        // A query from the current index blocks until a change, then answers past it (had it
        // not blocked, it would have answered the index it asked from).
        let url = format!("{base}?index={index}&wait=20s");
        let waiting = tokio::spawn(async move { call("GET", &url, None, "").await });
        arrived(&c, &format!("index={index}&wait=20s")).await;
        c.register_json(r#"{"ID":"s1","Name":"shop","Check":{"TTL":"10s"}}"#)
            .unwrap();
        let woke = waiting.await.unwrap();
        let next: u64 = woke.header("x-consul-index").parse().unwrap();
        assert!(next > index, "{next} > {index}");
        assert_eq!(json(&woke)[0]["Service"]["ID"], "s1");
        // With no change, the wait runs out and the same index comes back.
        let timed_out = call("GET", &format!("{base}?index={next}&wait=150ms"), None, "").await;
        assert_eq!(timed_out.header("x-consul-index"), next.to_string());
        // Parameters Consul refuses.
        let bad = call("GET", &format!("{base}?index=x"), None, "").await;
        assert_eq!((bad.status, bad.text()), (400, "Invalid index".into()));
        let bad = call("GET", &format!("{base}?index=1&wait=soon"), None, "").await;
        assert_eq!((bad.status, bad.text()), (400, "Invalid wait time".into()));
        let dc = call("GET", &format!("{base}?dc=dc9"), None, "").await;
        assert_eq!(
            (dc.status, dc.text()),
            (500, "No path to datacenter".into())
        );
        assert_eq!(
            call("GET", &format!("{base}?dc=dc1"), None, "")
                .await
                .status,
            200
        );
        // A restore drops the index and wakes every waiter at once.
        let url = format!("{base}?index={next}&wait=20s");
        let waiting = tokio::spawn(async move { call("GET", &url, None, "").await });
        arrived(&c, &format!("index={next}&wait=20s")).await;
        c.restore_index(3);
        let restored = waiting.await.unwrap();
        assert_eq!(restored.header("x-consul-index"), "3");
    })
    .await
}

#[tokio::test]
async fn acl_tokens_are_checked_as_the_agent_checks_them() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        c.require_tokens(&[
            ("writer", Rights::Write),
            ("reader", Rights::Read),
            ("nobody", Rights::Nothing),
        ]);
        let reg = format!("http://{}/v1/agent/service/register", c.addr());
        let body = r#"{"ID":"s1","Name":"shop","Check":{"TTL":"10s","Status":"passing"}}"#;
        let anon = call("PUT", &reg, None, body).await;
        assert_eq!(anon.status, 403);
        assert_eq!(
            anon.text(),
            "Permission denied: anonymous token lacks permission 'service:write' on \"shop\""
        );
        let unknown = call("PUT", &reg, Some("guess"), body).await;
        assert_eq!(
            (unknown.status, unknown.text()),
            (403, "ACL not found".into())
        );
        let reader = call("PUT", &reg, Some("reader"), body).await;
        assert_eq!(reader.status, 403);
        assert!(
            reader.text().contains("token with AccessorID"),
            "{}",
            reader.text()
        );
        // Invalid bodies are refused before the permission check, as Consul orders them.
        assert_eq!(call("PUT", &reg, None, r#"{"Name":""}"#).await.status, 400);
        assert_eq!(call("PUT", &reg, Some("writer"), body).await.status, 200);
        // Reads are filtered, not refused; `Authorization: Bearer` and `?token=` work too.
        let health = format!("http://{}/v1/health/service/shop", c.addr());
        assert_eq!(
            json(&call("GET", &health, None, "").await),
            serde_json::json!([])
        );
        assert_eq!(
            json(&call("GET", &health, Some("reader"), "").await)
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let bearer = send(
            &client(),
            Request::get(&health)
                .header("authorization", "Bearer reader")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(json(&bearer).as_array().unwrap().len(), 1);
        assert_eq!(
            json(&call("GET", &format!("{health}?token=reader"), None, "").await)
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(call("GET", &health, Some("guess"), "").await.status, 403);
        // A token that may not read gets the entries filtered out, and is told so.
        let filtered = call("GET", &health, Some("nobody"), "").await;
        assert_eq!(json(&filtered), serde_json::json!([]));
        assert_eq!(filtered.header("x-consul-results-filtered-by-acls"), "true");
        let anonymous = call("GET", &health, None, "").await;
        assert_eq!(
            anonymous.header("x-consul-results-filtered-by-acls"),
            "",
            "never told to anonymous"
        );
    })
    .await
}

#[tokio::test]
async fn fault_knobs_fail_slow_zero_restart_and_go_away() {
    within(DEADLINE, async {
        let mut c = ConsulDouble::start().await;
        c.register_json(r#"{"ID":"s1","Name":"shop","Check":{"TTL":"10s","Status":"passing"}}"#)
            .unwrap();
        let health = format!("http://{}/v1/health/service/shop", c.addr());
        c.set_knobs(|k| k.failing = true);
        let failed = call("GET", &health, None, "").await;
        assert_eq!(
            (failed.status, failed.text()),
            (500, "rpc error making call: No cluster leader".into())
        );
        c.set_knobs(|k| {
            k.failing = false;
            k.index_zero = true;
        });
        assert_eq!(
            call("GET", &health, None, "")
                .await
                .header("x-consul-index"),
            "0"
        );
        c.set_knobs(|k| {
            k.index_zero = false;
            k.slow = Some(Duration::from_secs(5));
        });
        let held =
            tokio::time::timeout(Duration::from_millis(200), call("GET", &health, None, "")).await;
        assert!(held.is_err(), "held back by the slow knob");
        c.set_knobs(|k| k.slow = None);
        assert_eq!(call("GET", &health, None, "").await.status, 200);
        // A restart forgets everything; the index goes on.
        let before = c.index();
        c.restart();
        assert!(c.service_ids().is_empty());
        assert!(c.index() > before);
        // Away: connections are refused; back on the same port.
        c.go_away();
        eventually(SETTLE, || async { get(&health, &[]).await.is_err() }).await;
        c.come_back().await;
        assert_eq!(call("GET", &health, None, "").await.status, 200);
        assert!(c
            .requests()
            .iter()
            .any(|r| r.endpoint == "health" && r.path_and_query == "/v1/health/service/shop"));
    })
    .await
}
