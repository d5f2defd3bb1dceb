//! etcd behind TLS with client certificates and a password (see `Etcd::start_secure`): waypost
//! resolves and registers through rustls with the configured CA, certificate and key and logs in
//! with `username`/`password`; a wrong password or a missing client certificate is refused, and
//! a file that is not PEM stops waypost at start-up, naming the key.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::etcd::{cloudwego_value, Etcd};
use support::*;
use waypost::config::EtcdLayout;
use waypost::register::{Registrar, Registration};
use waypost::registry::etcd::{Codec, EtcdClient, EtcdRegistrar};

const DEADLINE: Duration = Duration::from_secs(60);

/// `registry:` YAML for the secured `etcd`: TLS with `cert_and_key` (or without a client
/// certificate) and the password `password`.
fn registry(etcd: &Etcd, cert_and_key: bool, password: &str) -> String {
    let s = etcd.secure();
    let client = if cert_and_key {
        format!(", cert: {}, key: {}", s.cert.display(), s.key.display())
    } else {
        String::new()
    };
    etcd.registry_yaml(&format!(
        "    username: root\n    password: \"{password}\"\n    tls: {{ca: {}{client}}}\n",
        s.ca.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_and_registers_over_tls_with_a_client_certificate_and_a_password() {
    within(DEADLINE, async {
        let etcd = Etcd::start_secure();
        let a = Upstream::start("a").await;
        etcd.put(
            &format!("hertz/registry-etcd/echo/{}", a.addr),
            &cloudwego_value(&a.addr.to_string(), 10),
        );
        let password = etcd.secure().password.clone();
        let yaml = format!(
            "{}services:\n  echo: {{resolver: {{etcd: {{}}}}}}\n",
            registry(&etcd, true, &password)
        );
        let proxy = TestProxy::start(&yaml).await;
        assert_eq!(spread(&proxy, "echo", 10).await.get("a"), Some(&10));

        // The registrar, through the same client settings.
        let config = waypost::config::load_str("test.yaml", &yaml, &|_| None).unwrap();
        let client = Arc::new(
            EtcdClient::from_config(
                &config.registry.etcd,
                waypost::metrics::EtcdMetrics::detached(),
            )
            .unwrap(),
        );
        let registrar = EtcdRegistrar::new(
            client,
            Codec::new(EtcdLayout::Kitex, "kitex/registry-etcd"),
            Duration::from_secs(5),
        );
        let reg = Registration {
            service: "shop".into(),
            address: "10.0.0.7:8080".parse().unwrap(),
            weight: 10,
            tags: Default::default(),
            ttl: Duration::from_secs(5),
        };
        registrar.register(&reg).await.unwrap();
        let key = "kitex/registry-etcd/shop/10.0.0.7:8080";
        assert_eq!(etcd.get(key).unwrap(), cloudwego_value("10.0.0.7:8080", 10));
        registrar.renew(&reg).await.unwrap();
        registrar.deregister(&reg).await.unwrap();
        assert_eq!(etcd.get(key), None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_no_client_certificate_is_refused() {
    within(DEADLINE, async {
        let etcd = Etcd::start_secure();
        let password = etcd.secure().password.clone();
        for (what, cert, pw, needle) in [
            ("wrong password", true, "not-it", "refused the request"),
            (
                "no client certificate",
                false,
                password.as_str(),
                "unavailable",
            ),
        ] {
            let proxy = TestProxy::start_unready(&format!(
                "{}services:\n  echo: {{resolver: {{etcd: {{}}}}}}\n",
                registry(&etcd, cert, pw)
            ))
            .await;
            await_status(&proxy, "echo", "state", "failed".into()).await;
            let svc = debug_service(&proxy, "echo").await.unwrap();
            let error = svc["status"]["last_error"].as_str().unwrap_or_default();
            assert!(error.contains(needle), "{what}: {svc}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_pem_stops_waypost_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "not a certificate").unwrap();
    let yaml = format!(
        "registry:\n  etcd:\n    tls: {{ca: {}}}\nservices:\n  echo: {{resolver: {{etcd: {{}}}}}}\n",
        ca.display()
    );
    let config = waypost::config::load_str("test.yaml", &yaml, &|_| None).unwrap();
    let error = match waypost::App::build(config).await {
        Ok(_) => panic!("built with a CA file that holds no certificate"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("registry.etcd.tls.ca") && error.contains("does not hold PEM certificates"),
        "{error}"
    );
}
