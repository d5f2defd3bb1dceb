//! Consul as registry and resolver, against the Consul double (see `support/consul.rs`; no
//! Consul binary can be installed here), in both directions of the Go interop: services
//! registered with the bodies Hertz, Kitex and go-kit send are discovered and routed to by
//! weight through the real binary, and what waypost registers matches the Hertz/Kitex body
//! field for field. Also: the TTL check is passed at once and lapses without heartbeats, the
//! health gate withdraws and restores an entry while the agent runs the same HTTP check, a new
//! instance reaches the table through the blocking query, and an agent that forgot everything
//! gets the registration back. Outages, index faults, tokens and signals: `consul_failures.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::consul::ConsulDouble;
use support::external::{free_port, spawn_waypost};
use support::health::HealthEndpoint;
use support::*;
use waypost::config::{ConsulCheckKind, ConsulRegistryConfig};
use waypost::metrics::ConsulMetrics;
use waypost::register::{RegisterError, Registrar, Registration};
use waypost::registry::consul::{ConsulClient, ConsulRegistrar};

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(60);

fn client(c: &ConsulDouble) -> Arc<ConsulClient> {
    let cfg = ConsulRegistryConfig {
        address: c.addr().to_string(),
        ..ConsulRegistryConfig::default()
    };
    Arc::new(ConsulClient::from_config(&cfg, ConsulMetrics::detached()).unwrap())
}

fn passing(c: &ConsulDouble, name: &str) -> Vec<serde_json::Value> {
    c.health(name, true).as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_registration_is_passing_only_after_its_first_pass_and_lapses_without_one() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let client = client(&c);
        let registrar = ConsulRegistrar::new(
            client.clone(),
            ConsulCheckKind::Ttl,
            None,
            Duration::from_secs(60),
        );
        let reg = Registration {
            ttl: Duration::from_secs(2),
            ..registration(
                "shop",
                "127.0.0.1:9000",
                10,
                &[("zone", "a"), ("canary", "")],
            )
        };
        // The body alone registers the service with its check critical: not under ?passing.
        client.register(registrar.body(&reg)).await.unwrap();
        assert_eq!(
            c.check_status("service:shop:127.0.0.1:9000").as_deref(),
            Some("critical")
        );
        assert!(passing(&c, "shop").is_empty());
        // The registrar passes it right after registering: visible at once.
        registrar.register(&reg).await.unwrap();
        let entries = passing(&c, "shop");
        assert_eq!(entries.len(), 1);
        let svc = &entries[0]["Service"];
        assert_eq!(svc["ID"], "shop:127.0.0.1:9000");
        assert_eq!(svc["Tags"], serde_json::json!(["canary", "zone:a"]));
        assert_eq!(
            svc["Weights"],
            serde_json::json!({"Passing": 10, "Warning": 10})
        );
        let order: Vec<_> = c
            .requests()
            .iter()
            .rev()
            .take(2)
            .map(|r| r.endpoint)
            .collect();
        assert_eq!(
            order,
            ["pass", "register"],
            "passed right after registering"
        );
        // Without heartbeats it turns critical within the TTL and leaves ?passing...
        eventually(SETTLE, || async { passing(&c, "shop").is_empty() }).await;
        // ...and a renewal (a pass) brings it back.
        registrar.renew(&reg).await.unwrap();
        assert_eq!(passing(&c, "shop").len(), 1);
        let described = registrar.describe(&reg);
        assert_eq!(described["service_id"], "shop:127.0.0.1:9000");
        assert_eq!(described["check_id"], "service:shop:127.0.0.1:9000");
        assert_eq!(described["check"]["ttl_seconds"], 2.0);
        // Deregistration removes it; the agent then does not know it: Lost (the lifecycle's
        // "already gone").
        registrar.deregister(&reg).await.unwrap();
        assert!(c.service_ids().is_empty());
        assert!(matches!(
            registrar.deregister(&reg).await,
            Err(RegisterError::Lost(_))
        ));
        assert!(matches!(
            registrar.renew(&reg).await,
            Err(RegisterError::Lost(_))
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waypost_registers_matches_the_hertz_body_field_for_field() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        // waypost's own gate probes a port the app listens on; Consul's TCP check probes the
        // same port at the registered IP: the registered address, as Hertz and Kitex add it.
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        let proxy = TestProxy::start(&format!(
            "{}register:\n  - service: echo\n    address: 127.0.0.1:{port}\n    weight: 10\n    tags: {{k: v}}\n    registry: consul\n    check: {{tcp: \"127.0.0.1:{port}\", interval: 5s, timeout: 4s, rise: 1, consul: tcp}}\n",
            c.registry_yaml("")
        ))
        .await;
        // Byte for byte what hertz-contrib/registry's Register sends for this instance
        // (`REGISTRIES.md` §1.3), but for the timeout: Hertz's check has 5s/5s, and waypost
        // wants its timeout below its interval.
        let hertz = format!(
            r#"{{"ID":"echo:127.0.0.1:{port}","Name":"echo","Tags":["k:v"],"Port":{port},"Address":"127.0.0.1","Weights":{{"Passing":10,"Warning":10}},"Check":{{"Interval":"5s","Timeout":"5s","TCP":"127.0.0.1:{port}","DeregisterCriticalServiceAfter":"1m"}},"Checks":null}}"#
        );
        let sent = c.register_bodies();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0], hertz.replace(r#""Timeout":"5s""#, r#""Timeout":"4s""#));
        // The agent runs that check: it passes while the app listens.
        let id = format!("echo:127.0.0.1:{port}");
        eventually(SETTLE, || async { c.check_status(&format!("service:{id}")).as_deref() == Some("passing") }).await;
        let entry = debug_registration(&proxy).await;
        assert_eq!(entry["registry_state"]["check_kind"], "tcp");
        assert_eq!(entry["registry_state"]["service_id"], id.as_str());
        proxy.stop().await;
        assert!(c.service_ids().is_empty(), "deregistered at shutdown");
        drop(app);
    })
    .await
}

/// The first `/debug/registrations` entry.
async fn debug_registration(proxy: &TestProxy) -> serde_json::Value {
    let got = get(&format!("{}/debug/registrations", proxy.admin()), &[])
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    serde_json::from_slice::<serde_json::Value>(&got.body).unwrap()["registrations"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_withdraws_and_restores_while_the_agent_runs_the_same_http_check() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let app = HealthEndpoint::start(200).await;
        let proxy = TestProxy::start_unready(&format!(
            "{}shutdown: {{deregister_wait: 0s}}\nregister:\n  - service: shop\n    address: \"{}\"\n    registry: consul\n    check: {{http: \"{}\", interval: 100ms, timeout: 80ms, rise: 1, fall: 1, consul: http}}\n",
            c.registry_yaml("    ttl: 1s\n"),
            app.addr,
            app.url()
        ))
        .await;
        let id = format!("shop:{}", app.addr);
        let check = format!("service:{id}");
        eventually(SETTLE, || async { c.service(&id).is_some() }).await;
        // The agent runs waypost's own check (path, interval, timeout) against the registered IP.
        let kind = c.check_kind(&check).unwrap();
        assert_eq!(
            kind,
            support::consul::state::Kind::Http {
                url: format!("http://{}/healthz", app.addr),
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(80),
            }
        );
        eventually(SETTLE, || async { passing(&c, "shop").len() == 1 }).await;
        // Unhealthy: waypost withdraws it (rather than leaving it critical in the catalog).
        app.set(503);
        eventually(SETTLE, || async { c.service(&id).is_none() }).await;
        // Healthy again: registered again, and the agent's check passes again.
        app.set(200);
        eventually(SETTLE, || async { passing(&c, "shop").len() == 1 }).await;
        assert_eq!(debug_registration(&proxy).await["state"], "registered");
        proxy.stop().await;
        assert!(c.service(&id).is_none(), "deregistered at shutdown");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_forgot_everything_gets_the_registration_back_at_the_next_renewal() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = app.local_addr().unwrap();
        // One entry with the default TTL check, one whose TCP check the agent runs: renewals
        // are a pass for the first and a look-up of the service for the second.
        let proxy = TestProxy::start(&format!(
            "{}register:\n  - service: shop\n    address: \"{addr}\"\n    registry: consul\n    check: none\n  - service: shop-tcp\n    address: \"{addr}\"\n    registry: consul\n    check: {{tcp: \"{addr}\", interval: 100ms, timeout: 80ms, rise: 1, consul: tcp}}\n",
            c.registry_yaml("    ttl: 1s\n")
        ))
        .await;
        let ids = [format!("shop:{addr}"), format!("shop-tcp:{addr}")];
        for id in &ids {
            eventually(SETTLE, || async { c.service(id).is_some() }).await;
        }
        c.restart();
        assert!(c.service_ids().is_empty());
        // Renewals run every third of the 1s TTL: both come back within that.
        for id in &ids {
            eventually(SETTLE, || async { c.service(id).is_some() }).await;
        }
        eventually(SETTLE, || async { passing(&c, "shop").len() == 1 }).await;
        let text = metrics(&proxy).await;
        for service in ["shop", "shop-tcp"] {
            assert_eq!(
                metric(&text, "waypost_register_reregistrations_total", &[("service", service), ("registry", "consul")]),
                Some(1.0),
                "{service}: {text}"
            );
        }
        assert_eq!(
            metric(&text, "waypost_registry_consul_request_errors_total", &[("op", "check_pass"), ("kind", "not_found")]),
            Some(1.0)
        );
        assert_eq!(
            metric(&text, "waypost_registry_consul_request_errors_total", &[("op", "service"), ("kind", "not_found")]),
            Some(1.0)
        );
        support::external::promtool_check(text.as_bytes());
        drop(app);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hertz_kitex_and_go_kit_registrations_are_routed_to_by_weight_through_the_binary() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let hz = Upstream::start("hertz").await;
        let kx = Upstream::start("kitex").await;
        let gk = Upstream::start("go-kit").await;
        let v6 = Upstream::start_on("[::1]:0".parse().unwrap(), "v6").await;
        // hertz-contrib/registry: weight 3, tags, its default TCP check (5s/5s/1m).
        c.register_json(&format!(
            r#"{{"ID":"echo:127.0.0.1:{p}","Name":"echo","Tags":["zone:a","canary"],"Port":{p},"Address":"127.0.0.1","Weights":{{"Passing":3,"Warning":3}},"Check":{{"Interval":"5s","Timeout":"5s","TCP":"127.0.0.1:{p}","DeregisterCriticalServiceAfter":"1m"}},"Checks":null}}"#,
            p = hz.addr.port()
        ))
        .unwrap();
        // kitex-contrib/registry-consul with a TTL check, kept passing with UpdateTTL("online").
        let kitex_check = format!("service:echo:127.0.0.1:{}", kx.addr.port());
        c.register_json(&format!(
            r#"{{"ID":"echo:127.0.0.1:{p}","Name":"echo","Tags":["zone:"],"Port":{p},"Address":"127.0.0.1","Weights":{{"Passing":1,"Warning":1}},"Check":{{"CheckID":"{kitex_check}","TTL":"30s","DeregisterCriticalServiceAfter":"1m"}},"Checks":null}}"#,
            p = kx.addr.port()
        ))
        .unwrap();
        let update = support::send(
            &support::client(),
            http::Request::put(format!("http://{}/v1/agent/check/update/{kitex_check}", c.addr()))
                .body(full(r#"{"Status":"passing","Output":"online"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(update.status, 200);
        // go-kit: whatever registration the user builds — no weights, no address (the node's
        // address applies), an HTTP check; and one on IPv6.
        c.register_json(&format!(
            r#"{{"ID":"legacy-1","Name":"legacy","Port":{p},"Check":{{"HTTP":"http://127.0.0.1:{p}/health","Interval":"100ms"}}}}"#,
            p = gk.addr.port()
        ))
        .unwrap();
        c.register_json(&format!(
            r#"{{"ID":"legacy-2","Name":"legacy","Address":"::1","Port":{p},"Check":{{"TTL":"30s","Status":"passing"}}}}"#,
            p = v6.addr.port()
        ))
        .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        // Polls an hour apart: what becomes passing later arrives through the blocking query.
        let yaml = format!(
            "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n{}discovery: {{refresh_interval: 1h}}\nservices:\n  echo: {{resolver: {{consul: {{}}}}}}\n  legacy: {{resolver: {{consul: {{}}}}}}\n  zoned: {{resolver: {{consul: {{service: echo, tag: \"zone:a\"}}}}}}\n",
            c.registry_yaml("")
        );
        let _proc = spawn_waypost("waypost", &yaml, dir.path());
        wait_ready_at(([127, 0, 0, 1], admin).into()).await;
        let url = format!("http://127.0.0.1:{port}/");
        let answered = |host: &'static str| {
            let url = url.clone();
            async move {
                let mut names = std::collections::BTreeSet::new();
                for _ in 0..40 {
                    if let Ok(r) = get(&url, &[("host", host)]).await {
                        names.insert(r.header("x-instance").to_string());
                    }
                }
                names.into_iter().collect::<Vec<_>>()
            }
        };
        // The Hertz instance is passing once the agent's TCP check ran (within its 5s interval).
        eventually(Duration::from_secs(20), || async { answered("echo").await == ["hertz", "kitex"] }).await;
        eventually(SETTLE, || async { answered("legacy").await == ["go-kit", "v6"] }).await;
        assert_eq!(answered("zoned").await, ["hertz"], "only the tag zone:a");
        // By weight: 3 to 1.
        let mut counts = std::collections::HashMap::new();
        let client = support::client();
        for _ in 0..800 {
            let req = http::Request::get(&url).header("host", "echo").body(empty()).unwrap();
            let got = send(&client, req).await.unwrap();
            *counts.entry(got.header("x-instance").to_string()).or_insert(0usize) += 1;
        }
        assert_shares(&counts, &[("hertz", 0.75), ("kitex", 0.25)], 0.2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_reach_the_table_through_the_blocking_query() {
    within(DEADLINE, async {
        let c = ConsulDouble::start().await;
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        let body = |up: &Upstream, weight: u32| {
            format!(
                r#"{{"ID":"echo:{0}","Name":"echo","Address":"127.0.0.1","Port":{1},"Weights":{{"Passing":{weight},"Warning":1}},"Check":{{"TTL":"30s","Status":"passing"}}}}"#,
                up.addr, up.addr.port()
            )
        };
        c.register_json(&body(&a, 1)).unwrap();
        let proxy = TestProxy::start(&format!(
            "{}discovery: {{refresh_interval: 1h, guard: {{confirm: 1}}}}\nservices:\n  echo: {{resolver: {{consul: {{}}}}}}\n",
            c.registry_yaml("")
        ))
        .await;
        assert_eq!(spread(&proxy, "echo", 5).await.get("a"), Some(&5));
        // Polls are an hour apart: each change can only come through the watch.
        c.register_json(&body(&b, 1000)).unwrap();
        eventually(SETTLE, || async { spread(&proxy, "echo", 5).await.contains_key("b") }).await;
        c.deregister(&format!("echo:{}", b.addr)).unwrap();
        eventually(SETTLE, || async { spread(&proxy, "echo", 20).await.keys().collect::<Vec<_>>() == ["a"] }).await;
        // A warning check drops it from ?passing answers.
        c.set_status(&format!("service:echo:{}", a.addr), "warning");
        eventually(SETTLE, || async {
            support::dnstest::instance_weights(&proxy, "echo").await.is_empty()
        })
        .await;
        let svc = debug_service(&proxy, "echo").await.unwrap();
        assert_eq!(svc["status"]["resolver"], "consul");
        assert_eq!(svc["status"]["target"], "echo?passing=1");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_over_tls_with_client_certificates_and_a_ca_that_is_not_pem() {
    within(DEADLINE, async {
        let certs = tempfile::tempdir().unwrap();
        support::etcd::secure::make_certificates(certs.path());
        let c = ConsulDouble::start_tls(certs.path()).await;
        let up = Upstream::start("a").await;
        c.register_json(&format!(
            r#"{{"ID":"echo-1","Name":"echo","Address":"127.0.0.1","Port":{},"Check":{{"TTL":"1h","Status":"passing"}}}}"#,
            up.addr.port()
        ))
        .unwrap();
        let file = |name: &str| certs.path().join(name).display().to_string();
        let tls = |client: bool| {
            let identity = if client {
                format!(", cert: \"{}\", key: \"{}\"", file("client.crt"), file("client.key"))
            } else {
                String::new()
            };
            format!("    scheme: https\n    tls: {{ca: \"{}\"{identity}}}\n", file("ca.crt"))
        };
        // With a client certificate: resolves and registers over TLS.
        let proxy = TestProxy::start(&format!(
            "{}register:\n  - service: shop\n    address: \"{}\"\n    registry: consul\n    check: none\nservices:\n  echo: {{resolver: {{consul: {{}}}}}}\n",
            c.registry_yaml(&tls(true)),
            up.addr
        ))
        .await;
        assert_eq!(spread(&proxy, "echo", 5).await.get("a"), Some(&5));
        assert_eq!(c.service_ids(), ["echo-1".to_string(), format!("shop:{}", up.addr)]);
        // Without one, the agent drops the handshake: every read fails.
        let refused = TestProxy::start_unready(&format!(
            "{}services:\n  echo: {{resolver: {{consul: {{}}}}}}\n",
            c.registry_yaml(&tls(false))
        ))
        .await;
        eventually(SETTLE, || async {
            metric(&metrics(&refused).await, "waypost_registry_consul_request_errors_total", &[("op", "health"), ("kind", "unavailable")]) >= Some(1.0)
        })
        .await;
        expect_error(&refused, "echo", 503, "discovery_failed").await;
        // A CA file that is not PEM stops start-up, naming the key.
        let bad = certs.path().join("not-a-ca.pem");
        std::fs::write(&bad, "hello").unwrap();
        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nregistry:\n  consul:\n    address: \"{}\"\n    scheme: https\n    tls: {{ca: \"{}\"}}\nservices:\n  echo: {{resolver: {{consul: {{}}}}}}\n",
            c.addr(),
            bad.display()
        );
        let config = waypost::config::load_str("tls.yaml", &yaml, &|_| None).unwrap();
        let err = format!("{:#}", waypost::App::build(config).await.err().expect("refused"));
        assert!(err.contains("registry.consul.tls.ca") && err.contains("no PEM certificate"), "{err}");
    })
    .await
}
