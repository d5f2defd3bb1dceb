//! Certificate reload: files replaced on disk the way Kubernetes updates a secret mount (a new
//! `..<timestamp>` directory, then the `..data` symlink swapped to it). The next handshake sees
//! the new certificate, a connection made before goes on (a request in flight during the swap
//! finishes, and another follows on it), a corrupt file keeps the old certificate (logged and
//! counted), and an upstream CA changed on disk is trusted without a restart. The expiry gauge
//! follows the files.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::tls::{client_config, connect_tls, server_config, tls_service, Ca, Leaf, TlsUpstream};
use support::{eventually, get, metric, metrics, static_service, within, TestProxy, Upstream};

const LIMIT: Duration = Duration::from_secs(60);
/// Longer than the reload interval (2 s) several times over.
const RELOADED: Duration = Duration::from_secs(15);

/// A directory laid out like a Kubernetes secret mount: `name -> ..data/name`, `..data ->
/// ..<version>`.
struct Mount {
    dir: tempfile::TempDir,
    version: usize,
}

impl Mount {
    fn new(files: &[(&str, &str)]) -> Mount {
        let mut m = Mount {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        m.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), m.dir.path().join(name)).unwrap();
        }
        m
    }

    /// Writes `files` into a new version directory and swaps `..data` to it atomically.
    fn swap(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let vdir = self.dir.path().join(&version);
        std::fs::create_dir(&vdir).unwrap();
        for (name, text) in files {
            std::fs::write(vdir.join(name), text).unwrap();
        }
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn yaml(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The certificate the listener at `addr` presents now, as PEM-free DER bytes.
async fn presented(addr: std::net::SocketAddr, ca: &Ca) -> Vec<u8> {
    let tls = connect_tls(addr, "waypost.local", client_config(ca, None, &[]))
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(leaf: &Leaf) -> Vec<u8> {
    support::tls::certs(&leaf.cert)[0].to_vec()
}

#[tokio::test]
async fn a_listener_certificate_swapped_on_disk_is_used_by_the_next_handshake() {
    within(LIMIT, async {
        let ca = Ca::new("test ca");
        let (a, b) = (ca.issue(&["waypost.local"]), ca.issue(&["waypost.local"]));
        let mut mount = Mount::new(&[("tls.crt", &a.cert), ("tls.key", &a.key)]);
        let up = Upstream::start("plain").await;
        let proxy = TestProxy::start(&format!(
            "listen_tls: {{cert: {}, key: {}}}\nservices:\n{}",
            yaml(&mount.path("tls.crt")),
            yaml(&mount.path("tls.key")),
            static_service("echo", &[(up.addr, 1)])
        ))
        .await;
        let addr = proxy.addrs.outbound;
        assert_eq!(presented(addr, &ca).await, der(&a));
        let m = metrics(&proxy).await;
        let expiry = metric(
            &m,
            "waypost_tls_certificate_expiry_timestamp_seconds",
            &[("certificate", "listen_tls.cert")],
        )
        .expect("expiry gauge");
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
        assert!(
            expiry > now + 360.0 * 86400.0 && expiry < now + 370.0 * 86400.0,
            "{expiry}"
        );

        // A connection made before the swap, with a request in flight across it.
        let tls = connect_tls(addr, "waypost.local", client_config(&ca, None, &[]))
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/slow?ms=3000")
            .header("host", "echo")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let in_flight = send.send_request(req);

        mount.swap(&[("tls.crt", &b.cert), ("tls.key", &b.key)]);
        let (ca2, b_der) = (&ca, der(&b));
        eventually(RELOADED, || {
            let b_der = b_der.clone();
            async move { presented(addr, ca2).await == b_der }
        })
        .await;

        let resp = in_flight.await.expect("the request in flight was not cut");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "slow\n"
        );
        let again = Request::get("/")
            .header("host", "echo")
            .body(Empty::new())
            .unwrap();
        assert_eq!(
            send.send_request(again).await.unwrap().status(),
            200,
            "the old connection goes on"
        );

        // A corrupt certificate: the old material stays, and the failure is counted.
        mount.swap(&[
            ("tls.crt", "-----BEGIN CERTIFICATE-----\nnot base64!\n"),
            ("tls.key", &b.key),
        ]);
        let admin = proxy.admin();
        eventually(RELOADED, || {
            let admin = admin.clone();
            async move {
                let m = get(&format!("{admin}/metrics"), &[]).await.unwrap().text();
                metric(&m, "waypost_tls_reloads_total", &[("result", "error")]) >= Some(1.0)
            }
        })
        .await;
        assert_eq!(
            presented(addr, &ca).await,
            der(&b),
            "the previous certificate stays in use"
        );
        let m = metrics(&proxy).await;
        assert_eq!(
            metric(&m, "waypost_tls_reloads_total", &[("result", "ok")]),
            Some(1.0),
            "{m}"
        );
        support::external::promtool_check(m.as_bytes());
    })
    .await;
}

#[tokio::test]
async fn an_upstream_ca_changed_on_disk_is_trusted_without_a_restart() {
    within(LIMIT, async {
        let (old, new) = (Ca::new("old ca"), Ca::new("new ca"));
        let leaf = new.issue(&["secure"]);
        let up =
            TlsUpstream::start("secure", server_config(&leaf, None, &[b"http/1.1"]), None).await;
        let mut mount = Mount::new(&[("ca.crt", &old.pem())]);
        let tls = format!("{{ca: {}}}", yaml(&mount.path("ca.crt")));
        let proxy = TestProxy::start(&format!(
            "services:\n{}",
            tls_service("secure", up.addr, "", &tls)
        ))
        .await;
        let got = get(&format!("{}/", proxy.url()), &[("host", "secure")])
            .await
            .unwrap();
        assert_eq!(got.status, 502, "{}", got.text());
        mount.swap(&[("ca.crt", &new.pem())]);
        let url = proxy.url();
        eventually(RELOADED, || {
            let url = url.clone();
            async move {
                get(&format!("{url}/"), &[("host", "secure")])
                    .await
                    .is_ok_and(|g| g.status == 200)
            }
        })
        .await;
    })
    .await;
}
