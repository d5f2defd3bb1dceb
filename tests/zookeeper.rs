//! ZooKeeper as registry and resolver against a real ZooKeeper 3.8 (see `support/zookeeper.rs`),
//! in both directions of the Go interop: nodes written as Hertz and Kitex write them — one with
//! `zkCli.sh` itself — are discovered and routed to, changes arrive through the persistent
//! watch, and the nodes waypost's registrar writes read back byte for byte against golden data.
//! Also here: `echo` never reads `echo2`, a malformed child does not hide the good ones (and is
//! counted once), weight 0 reads as 10, IPv6, and digest authentication. Session expiry is in
//! `zookeeper_session.rs`, the binary's lifecycle in `zookeeper_process.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::zookeeper::{self as zk, cloudwego_data, unique_root, ZooKeeper};
use support::*;
use waypost::config::{Dur, ZookeeperRegistryConfig};
use waypost::metrics::ZookeeperMetrics;
use waypost::register::{RegisterError, Registrar, Registration};
use waypost::registry::zookeeper::{Codec, ZookeeperRegistrar, ZookeeperSession};
use zookeeper_client::{Acls, CreateMode};

/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// A session of waypost's own on `zk` (credentials `auth`), supervised until the trigger fires.
fn session(
    zk: &ZooKeeper,
    auth: Option<(&str, &str)>,
) -> (Arc<ZookeeperSession>, waypost::shutdown::Trigger) {
    let cfg = ZookeeperRegistryConfig {
        servers: vec![zk.address().to_string()],
        session_timeout: Dur(zk::SESSION),
        request_timeout: Dur::from_secs(1),
        username: auth.map(|a| a.0.to_string()),
        password: auth.map(|a| a.1.to_string()),
        ..ZookeeperRegistryConfig::default()
    };
    let (trigger, stop) = waypost::shutdown::channel();
    (
        ZookeeperSession::new(&cfg, ZookeeperMetrics::detached(), stop),
        trigger,
    )
}

/// Creates `path` with `data` through `zkCli.sh`, as an operator would (parents must exist).
fn zkcli_create(zk: &ZooKeeper, path: &str, data: &str) {
    let cli = "/usr/share/zookeeper/bin/zkCli.sh";
    assert!(
        std::path::Path::new(cli).is_file(),
        "{cli} is missing: run `apt-get install -y zookeeper`"
    );
    let out = std::process::Command::new(cli)
        .args(["-server", &zk.address().to_string(), "create", path, data])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("Created {path}")),
        "zkCli.sh: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_written_as_hertz_and_kitex_write_them_are_routed_to_and_changes_arrive_by_watch() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let ups = [
            Upstream::start("hertz").await,
            Upstream::start("kitex").await,
            Upstream::start_on("[::1]:0".parse().unwrap(), "kitex-v6").await,
            Upstream::start("named").await,
        ];
        // Hertz (sonic, tags) through zkCli.sh; Kitex (encoding/json, nil tags) ephemeral, as
        // a live Kitex server's session holds it; Kitex's bracket-less IPv6; a Kitex service
        // whose name is no host name.
        zk::create(&client, &format!("{root}/hz"), b"").await;
        zkcli_create(
            zk,
            &format!("{root}/hz/{}", ups[0].addr),
            r#"{"Weight":10,"Tags":{"zone":"a"}}"#,
        );
        let kx = format!("{root}/kx/{}", ups[1].addr);
        zk::create_as(&client, &kx, cloudwego_data(10).as_bytes(), CreateMode::Ephemeral).await;
        let v6 = format!("{root}/kx/::1:{}", ups[2].addr.port());
        zk::create_as(&client, &v6, cloudwego_data(10).as_bytes(), CreateMode::Ephemeral).await;
        zk::create(&client, &format!("{root}/Echo.Service/{}", ups[3].addr), cloudwego_data(10).as_bytes()).await;

        // Polls an hour apart: what changes later can only arrive through the watch.
        let proxy = TestProxy::start(&format!(
            "{}discovery: {{refresh_interval: 1h}}\nservices:\n  hz: {{resolver: {{zookeeper: {{}}}}}}\n  \
             kx: {{resolver: {{zookeeper: {{}}}}}}\n  named: {{resolver: {{zookeeper: {{name: Echo.Service}}}}}}\n",
            zk.registry_yaml(&format!("    root: {root}\n"))
        ))
        .await;
        let url = proxy.url();
        assert_eq!(routed_to(&url, "hz").await, "hertz");
        assert_eq!(routed_to(&url, "named").await, "named");
        let kitex = spread(&proxy, "kx", 40).await;
        assert!(kitex.contains_key("kitex") && kitex.contains_key("kitex-v6"), "{kitex:?}");
        let hz = debug_service(&proxy, "hz").await.unwrap();
        assert_eq!(hz["instances"][0]["tags"]["zone"], "a", "{hz}");

        // A second Hertz instance joins, the first leaves, the new one's weight changes: each
        // reaches the table through the watch.
        let late = Upstream::start("hertz-late").await;
        let late_path = format!("{root}/hz/{}", late.addr);
        zk::create(&client, &late_path, cloudwego_data(10).as_bytes()).await;
        eventually(SETTLE, || async {
            spread(&proxy, "hz", 20).await.contains_key("hertz-late")
        })
        .await;
        zk::delete(&client, &format!("{root}/hz/{}", ups[0].addr)).await;
        let only_late = [(late.addr.to_string(), 10)];
        eventually(SETTLE, || async {
            support::dnstest::instance_weights(&proxy, "hz").await == only_late
        })
        .await;
        for _ in 0..20 {
            assert_eq!(routed_to(&url, "hz").await, "hertz-late");
        }
        zk::set(&client, &late_path, br#"{"Weight":7,"Tags":null}"#).await;
        eventually(SETTLE, || async {
            support::dnstest::instance_weights(&proxy, "hz").await == [(late.addr.to_string(), 7)]
        })
        .await;
        // The whole service node goes (the guard holds the emptying answer: still served) and
        // comes back.
        let held = || async {
            support::dnstest::refreshes(&proxy, "hz", "held").await
        };
        let held_before = held().await;
        zk::delete(&client, &late_path).await;
        zk::delete(&client, &format!("{root}/hz")).await;
        eventually(SETTLE, || async { held().await > held_before }).await;
        assert_eq!(routed_to(&url, "hz").await, "hertz-late");
        zk::create(&client, &late_path, cloudwego_data(10).as_bytes()).await;
        eventually(SETTLE, || async {
            support::dnstest::instance_weights(&proxy, "hz").await == only_late
        })
        .await;
        assert_eq!(routed_to(&url, "hz").await, "hertz-late");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registrar_writes_golden_nodes_and_replaces_another_sessions_node() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let (session, _stop) = session(zk, None);
        let registrar = ZookeeperRegistrar::new(session.clone(), Codec::new(&root));
        let cases = [
            (
                registration("echo", "127.0.0.1:8080", 10, &[]),
                "echo/127.0.0.1:8080",
                r#"{"Weight":10,"Tags":null}"#,
            ),
            (
                registration(
                    "echo",
                    "10.0.0.7:8888",
                    3,
                    &[("zone", "a"), ("env", "<prod>")],
                ),
                "echo/10.0.0.7:8888",
                r#"{"Weight":3,"Tags":{"env":"\u003cprod\u003e","zone":"a"}}"#,
            ),
            (
                registration("echo", "[fd00::7]:8888", 10, &[]),
                "echo/[fd00::7]:8888",
                r#"{"Weight":10,"Tags":null}"#,
            ),
        ];
        for (reg, path, data) in cases {
            let path = format!("{root}/{path}");
            registrar.register(&reg).await.unwrap();
            let (got, stat) = zk::get(&client, &path).await.expect("the node exists");
            assert_eq!(String::from_utf8(got).unwrap(), data);
            let owner = registrar.owner(&reg).expect("registered");
            assert_eq!(
                stat.ephemeral_owner, owner,
                "ephemeral, owned by waypost's session"
            );
            let described = registrar.describe(&reg);
            assert_eq!(described["path"], path.as_str());
            assert_eq!(
                described["session"],
                format!("{:#x}", owner as u64),
                "{described}"
            );
            registrar.renew(&reg).await.unwrap();
            registrar.deregister(&reg).await.unwrap();
            assert!(
                zk::get(&client, &path).await.is_none(),
                "deregistration deletes it"
            );
            assert_eq!(registrar.describe(&reg)["session"], serde_json::Value::Null);
        }
        let (parent, stat) = zk::get(&client, &format!("{root}/echo")).await.unwrap();
        assert_eq!(
            (parent.len(), stat.ephemeral_owner),
            (0, 0),
            "a persistent, empty parent stays"
        );
        assert_eq!(
            registrar.renew_interval(&cases_reg()),
            zk::SESSION / 3,
            "a third of the session timeout, at most a second"
        );

        // A node another session holds at the address (a waypost restarted within the session
        // timeout) is replaced, not a NodeExists failure as in Hertz; a persistent one too.
        let reg = registration("echo", "127.0.0.1:9000", 10, &[]);
        let path = format!("{root}/echo/127.0.0.1:9000");
        for mode in [CreateMode::Ephemeral, CreateMode::Persistent] {
            zk::create_as(&client, &path, b"left over", mode).await;
            registrar.register(&reg).await.unwrap();
            let (data, stat) = zk::get(&client, &path).await.unwrap();
            assert_eq!(data, cloudwego_data(10).as_bytes());
            assert_eq!(Some(stat.ephemeral_owner), registrar.owner(&reg));
            assert_eq!(
                zk::children(&client, &format!("{root}/echo")).await,
                ["127.0.0.1:9000"]
            );
            registrar.deregister(&reg).await.unwrap();
        }

        // Deleted behind waypost's back, or re-created by another session: lost.
        registrar.register(&reg).await.unwrap();
        zk::delete(&client, &path).await;
        let lost = registrar.renew(&reg).await;
        assert!(
            matches!(lost, Err(RegisterError::Lost(ref m)) if m.contains("deleted")),
            "{lost:?}"
        );
        zk::create_as(&client, &path, b"theirs", CreateMode::Ephemeral).await;
        let lost = registrar.renew(&reg).await;
        assert!(
            matches!(lost, Err(RegisterError::Lost(ref m)) if m.contains("re-created by session")),
            "{lost:?}"
        );
        // Someone else's node is left alone at deregistration.
        registrar.deregister(&reg).await.unwrap();
        assert_eq!(zk::get(&client, &path).await.unwrap().0, b"theirs");
    })
    .await
}

/// Any registration (only its session timeout matters to `renew_interval`).
fn cases_reg() -> Registration {
    registration("echo", "127.0.0.1:1", 10, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_never_reads_echo2_and_a_malformed_child_does_not_hide_the_good_ones() {
    within(DEADLINE, async {
        let (zk, client, root) = zk::fixture().await;
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        zk::create(&client, &format!("{root}/echo/{}", a.addr), cloudwego_data(0).as_bytes()).await;
        zk::create(&client, &format!("{root}/echo/not-an-address"), cloudwego_data(10).as_bytes()).await;
        let broken = format!("{root}/echo/127.0.0.1:1");
        zk::create(&client, &broken, b"{not json").await;
        zk::create(&client, &format!("{root}/echo2/{}", b.addr), cloudwego_data(10).as_bytes()).await;
        let proxy = TestProxy::start(&format!(
            "{}discovery: {{refresh_interval: 200ms}}\nservices:\n  echo: {{resolver: {{zookeeper: {{}}}}}}\n  echo2: {{resolver: {{zookeeper: {{}}}}}}\n",
            zk.registry_yaml(&format!("    root: {root}\n"))
        ))
        .await;
        assert_eq!(
            support::dnstest::instance_weights(&proxy, "echo").await,
            [(a.addr.to_string(), 10)],
            "weight 0 reads as 10; echo2's instance and the two bad children are not here"
        );
        let counts = spread(&proxy, "echo", 50).await;
        assert_eq!(counts.get("a"), Some(&50), "echo routed elsewhere: {counts:?}");
        assert_eq!(spread(&proxy, "echo2", 10).await.get("b"), Some(&10));

        // Polled every 200 ms, the two bad children are still counted once each, polls later.
        let polls = || async { support::dnstest::refreshes(&proxy, "echo", "unchanged").await };
        eventually(SETTLE, || async { polls().await >= 3.0 }).await;
        let invalid = || async {
            metric(&metrics(&proxy).await, "waypost_registry_zookeeper_invalid_children_total", &[])
        };
        assert_eq!(invalid().await, Some(2.0));
        let text = metrics(&proxy).await;
        support::external::promtool_check(text.as_bytes());
        // A new bad version of one counts again.
        zk::set(&client, &broken, b"[still not]").await;
        eventually(SETTLE, || async { invalid().await == Some(3.0) }).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_digest_auth_nodes_are_the_identitys_only_and_read_with_it() {
    within(DEADLINE, async {
        let zk = ZooKeeper::shared();
        let root = unique_root();
        let up = Upstream::start("secure").await;
        let (session, _stop) = session(zk, Some(("waypost", "s3cret")));
        let registrar = ZookeeperRegistrar::new(session, Codec::new(&root));
        let reg = registration("echo", &up.addr.to_string(), 10, &[]);
        registrar.register(&reg).await.unwrap();

        // Without the credentials, nothing is readable — as the Go registries' DigestACL.
        let anonymous = zk.client().await;
        let path = format!("{root}/echo/{}", up.addr);
        for p in [path.as_str(), &format!("{root}/echo")] {
            let denied = anonymous.get_data(p).await;
            assert_eq!(denied.err(), Some(zookeeper_client::Error::NoAuth), "{p}");
        }
        // A Go client that authenticates the same way reads it.
        let authed = zookeeper_client::Client::connector()
            .with_auth("digest", b"waypost:s3cret")
            .connect(&zk.address().to_string())
            .await
            .unwrap();
        let (acl, _) = authed.get_acl(&path).await.unwrap();
        assert_eq!(acl.len(), 1, "{acl:?}");
        assert_eq!(
            (acl[0].scheme(), acl[0].id().split(':').next()),
            ("digest", Some("waypost"))
        );
        assert_eq!(acl[0].permission(), zookeeper_client::Permission::ALL);
        assert_eq!(
            authed.get_data(&path).await.unwrap().0,
            cloudwego_data(10).as_bytes()
        );

        // waypost with the credentials routes to it; without them it cannot list the service.
        let yaml = |auth: &str| {
            format!(
                "{}services:\n  echo: {{resolver: {{zookeeper: {{}}}}}}\n",
                zk.registry_yaml(&format!("    root: {root}\n{auth}"))
            )
        };
        let proxy = TestProxy::start(&yaml("    username: waypost\n    password: s3cret\n")).await;
        assert_eq!(routed_to(&proxy.url(), "echo").await, "secure");
        let blind = TestProxy::start_unready(&yaml("")).await;
        await_status(&blind, "echo", "state", "failed".into()).await;
        let status = debug_service(&blind, "echo").await.unwrap();
        assert!(
            status["status"]["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("not authorized"),
            "{status}"
        );
        // Nodes of other identities under a readable service are skipped, not fatal (this root
        // is not waypost's, whose nodes — the root included — are the identity's only).
        let root = unique_root();
        let open = format!("{root}/open");
        zk::create(
            &anonymous,
            &format!("{open}/{}", up.addr),
            cloudwego_data(10).as_bytes(),
        )
        .await;
        authed
            .create(
                &format!("{open}/127.0.0.1:2"),
                b"{}",
                &CreateMode::Persistent.with_acls(Acls::creator_all()),
            )
            .await
            .unwrap();
        let open_proxy = TestProxy::start(&format!(
            "{}services:\n  open: {{resolver: {{zookeeper: {{}}}}}}\n",
            zk.registry_yaml(&format!("    root: {root}\n"))
        ))
        .await;
        assert_eq!(routed_to(&open_proxy.url(), "open").await, "secure");
    })
    .await
}
