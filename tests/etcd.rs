//! etcd as registry and resolver against a real etcd 3.4 (see `support/etcd.rs`), in both
//! directions of the Go interop: keys written with `etcdctl` exactly as a Hertz server, a Kitex
//! server and grpc-go's endpoints manager write them are discovered and routed to through the
//! real binary, and the keys waypost's registrar writes read back byte for byte against golden
//! values. Also here: `echo` never reads `echo2`, values that do not parse are skipped and
//! counted once, weight 0 reads as 10, IPv6, and the registrar's lease handling — deregistration
//! revokes, a revoked lease or a deleted key is put back. Outages, clusters and compaction are in
//! `etcd_failures.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::etcd::{cloudwego_value, Etcd};
use support::external::{free_port, spawn_waypost};
use support::*;
use waypost::config::EtcdLayout;
use waypost::register::Registrar;
use waypost::registry::etcd::{Codec, EtcdRegistrar};

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_as_hertz_kitex_and_grpc_write_them_are_routed_to_by_the_binary() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let ups = [
            Upstream::start("hertz").await,
            Upstream::start("kitex").await,
            Upstream::start("kitex-old").await,
            Upstream::start("grpc").await,
            Upstream::start("named").await,
        ];
        let a = |i: usize| ups[i].addr.to_string();
        // hertz-contrib/registry (sonic) with tags; kitex-contrib/registry-etcd (encoding/json,
        // nil tags), once with its default prefix and once with the deprecated constructors'
        // empty one; grpc-go's endpoints manager under the target `foo/bar/grpc-svc`; a Kitex
        // service whose name is no host name.
        etcd.put(
            &format!("hertz/registry-etcd/hz/{}", a(0)),
            &format!(r#"{{"network":"tcp","address":"{}","weight":10,"tags":{{"zone":"a"}}}}"#, a(0)),
        );
        etcd.put(&format!("kitex/registry-etcd/kx/{}", a(1)), &cloudwego_value(&a(1), 10));
        etcd.put(&format!("/kx-old/{}", a(2)), &cloudwego_value(&a(2), 10));
        etcd.put(
            &format!("foo/bar/grpc-svc/{}", a(3)),
            &format!(r#"{{"Op":0,"Addr":"{}","Metadata":null}}"#, a(3)),
        );
        etcd.put(&format!("kitex/registry-etcd/Echo.Service/{}", a(4)), &cloudwego_value(&a(4), 10));

        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        // Polls an hour apart: what changes later can only arrive through the watch.
        let yaml = format!(
            "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n{}discovery: {{refresh_interval: 1h}}\nservices:\n  \
             hz: {{resolver: {{etcd: {{}}}}}}\n  \
             kx: {{resolver: {{etcd: {{layout: kitex}}}}}}\n  \
             kx-old: {{resolver: {{etcd: {{layout: kitex, prefix: \"\"}}}}}}\n  \
             grpc-svc: {{resolver: {{etcd: {{layout: grpc, prefix: foo/bar}}}}}}\n  \
             named: {{resolver: {{etcd: {{layout: kitex, name: Echo.Service}}}}}}\n",
            etcd.registry_yaml("")
        );
        let _proc = spawn_waypost("waypost", &yaml, dir.path());
        wait_ready_at(([127, 0, 0, 1], admin).into()).await;
        let url = format!("http://127.0.0.1:{port}");
        for (host, instance) in [
            ("hz", "hertz"),
            ("kx", "kitex"),
            ("kx-old", "kitex-old"),
            ("grpc-svc", "grpc"),
            ("named", "named"),
        ] {
            assert_eq!(routed_to(&url, host).await, instance);
        }

        // A second Hertz instance joins, then the first leaves: each reaches the table through
        // the watch.
        let late = Upstream::start("hertz-late").await;
        etcd.put(
            &format!("hertz/registry-etcd/hz/{}", late.addr),
            &cloudwego_value(&late.addr.to_string(), 10),
        );
        etcd.del(&format!("hertz/registry-etcd/hz/{}", a(0)));
        eventually(SETTLE, || async { routed_to(&url, "hz").await == "hertz-late" }).await;
        for _ in 0..20 {
            assert_eq!(routed_to(&url, "hz").await, "hertz-late");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registrar_writes_golden_keys_and_values_with_a_lease_and_revokes_it() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let client = etcd.client();
        let cases = [
            (
                EtcdLayout::Hertz,
                "hertz/registry-etcd",
                registration("echo", "127.0.0.1:8080", 10, &[]),
                "hertz/registry-etcd/echo/127.0.0.1:8080",
                r#"{"network":"tcp","address":"127.0.0.1:8080","weight":10,"tags":null}"#,
            ),
            (
                EtcdLayout::Kitex,
                "kitex/registry-etcd",
                registration("echo", "10.0.0.7:8888", 3, &[("zone", "a"), ("env", "prod")]),
                "kitex/registry-etcd/echo/10.0.0.7:8888",
                r#"{"network":"tcp","address":"10.0.0.7:8888","weight":3,"tags":{"env":"prod","zone":"a"}}"#,
            ),
            (
                EtcdLayout::Kitex,
                "",
                registration("echo", "[fd00::7]:8888", 10, &[]),
                "/echo/[fd00::7]:8888",
                r#"{"network":"tcp","address":"[fd00::7]:8888","weight":10,"tags":null}"#,
            ),
            (
                EtcdLayout::Grpc,
                "foo/bar",
                registration("echo", "10.0.0.5:50051", 10, &[]),
                "foo/bar/echo/10.0.0.5:50051",
                r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}"#,
            ),
        ];
        for (layout, prefix, reg, key, value) in cases {
            // A leftover of an earlier run is simply overwritten.
            etcd.put(key, "left over");
            let registrar = EtcdRegistrar::new(
                client.clone(),
                Codec::new(layout, prefix),
                Duration::from_secs(7),
            );
            registrar.register(&reg).await.unwrap();
            assert_eq!(etcd.get(key).as_deref(), Some(value), "{layout:?}");
            let lease = etcd.lease_of(key).expect("the key holds a lease");
            let described = registrar.describe(&reg);
            assert_eq!(described["key"], key);
            assert_eq!(described["lease"], lease.as_str(), "{described}");
            assert_eq!(etcd.granted_ttl(&lease), Some(7), "lease_ttl");
            assert_eq!(registrar.renew_interval(&reg), Duration::from_secs(7) / 3);
            registrar.renew(&reg).await.unwrap();

            registrar.deregister(&reg).await.unwrap();
            assert_eq!(etcd.get(key), None, "deregistration deletes the key");
            assert!(
                !etcd.leases().contains(&lease),
                "and revokes the lease (Hertz and Kitex leave it to expire)"
            );
            assert_eq!(registrar.describe(&reg)["lease"], serde_json::Value::Null);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_or_a_deleted_key_is_put_back_by_the_registration_loop() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let registrar = Arc::new(EtcdRegistrar::new(
            etcd.client(),
            Codec::new(EtcdLayout::Kitex, "kitex/registry-etcd"),
            Duration::from_secs(2),
        ));
        let reg = registration("echo", "127.0.0.1:9000", 10, &[]);
        let key = "kitex/registry-etcd/echo/127.0.0.1:9000";
        let (trigger, stop) = waypost::shutdown::channel();
        let task = tokio::spawn(
            reg.clone()
                .run(registrar.clone() as Arc<dyn Registrar>, stop),
        );
        let first = {
            let etcd = &etcd;
            eventually(SETTLE, || async move { etcd.lease_of(key).is_some() }).await;
            etcd.lease_of(key).unwrap()
        };

        // Revoked behind waypost's back: the key goes with the lease, and comes back.
        etcd.revoke(&first);
        assert_eq!(etcd.get(key), None);
        let etcd = &etcd;
        let first = &first;
        eventually(SETTLE, || async move {
            etcd.lease_of(key).is_some_and(|l| &l != first)
        })
        .await;

        // Deleted behind waypost's back, its lease alive: put back too.
        let second = etcd.lease_of(key).unwrap();
        etcd.del(key);
        let second = &second;
        eventually(SETTLE, || async move {
            etcd.lease_of(key).is_some_and(|l| &l != second)
        })
        .await;
        assert_eq!(
            etcd.get(key).unwrap(),
            cloudwego_value("127.0.0.1:9000", 10)
        );

        trigger.fire();
        task.await.unwrap();
        assert_eq!(etcd.get(key), None, "deregistered at shutdown");
        assert!(
            etcd.leases().is_empty(),
            "no lease left behind: {:?}",
            etcd.leases()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_never_reads_echo2_bad_values_are_skipped_and_counted_weight_0_reads_10_and_ipv6() {
    within(DEADLINE, async {
        let etcd = Etcd::start();
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        let v6 = Upstream::start_on("[::1]:0".parse().unwrap(), "v6").await;
        let p = "hertz/registry-etcd";
        etcd.put(&format!("{p}/echo/{}", a.addr), &cloudwego_value(&a.addr.to_string(), 0));
        // Kitex writes IPv6 without brackets.
        etcd.put(
            &format!("{p}/echo/::1:{}", v6.addr.port()),
            &cloudwego_value(&format!("::1:{}", v6.addr.port()), 30),
        );
        etcd.put(&format!("{p}/echo/broken"), "{not json");
        etcd.put(&format!("{p}/echo2/{}", b.addr), &cloudwego_value(&b.addr.to_string(), 10));
        let proxy = TestProxy::start(&format!(
            "{}discovery: {{refresh_interval: 200ms}}\nservices:\n  echo: {{resolver: {{etcd: {{}}}}}}\n  echo2: {{resolver: {{etcd: {{}}}}}}\n",
            etcd.registry_yaml("")
        ))
        .await;
        let weights = support::dnstest::instance_weights(&proxy, "echo").await;
        assert_eq!(
            weights,
            [
                (a.addr.to_string(), 10),
                (v6.addr.to_string(), 30),
            ],
            "weight 0 reads as 10; echo2's instance and the broken value are not here"
        );
        let counts = spread(&proxy, "echo", 200).await;
        assert!(!counts.contains_key("b"), "echo routed to echo2: {counts:?}");
        assert!(counts.get("v6").copied().unwrap_or(0) > 100, "{counts:?}");
        assert_eq!(spread(&proxy, "echo2", 10).await.get("b"), Some(&10));

        // Polled every 200 ms, the broken value is still counted once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = metrics(&proxy).await;
        assert_eq!(
            metric(&text, "waypost_registry_etcd_invalid_values_total", &[("layout", "hertz")]),
            Some(1.0),
            "{text}"
        );
        support::external::promtool_check(text.as_bytes());
        // A new bad revision of it counts again.
        etcd.put(&format!("{p}/echo/broken"), "{still not json");
        eventually(SETTLE, || async {
            metric(
                &metrics(&proxy).await,
                "waypost_registry_etcd_invalid_values_total",
                &[("layout", "hertz")],
            ) == Some(2.0)
        })
        .await;
    })
    .await
}
