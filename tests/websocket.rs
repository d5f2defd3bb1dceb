//! WebSocket (an HTTP/1.1 upgrade) through waypost: the upgrade request reaches the picked
//! instance with its `Upgrade`, the `101` comes back, and the two connections are joined both
//! ways — a message the server sends first, echoes of text and of a 1 MiB binary message, the
//! close handshake — and counted as an upgraded connection. A real tokio-tungstenite client and
//! server, on 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{
    eventually, get, metric, metrics, static_service, within, TestProxy, Upstream, SETTLE,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(30);

/// An echo WebSocket server that greets each client first; stops when the test ends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let _ = ws.send(Message::text("welcome")).await;
                while let Some(Ok(msg)) = ws.next().await {
                    // tungstenite answers pings and the close itself.
                    let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                    if echo && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_both_ways_with_a_large_message_and_the_close_handshake() {
    within(LIMIT, async {
        let server = echo_server().await;
        let proxy = TestProxy::start(&format!(
            "services:\n{}",
            static_service("ws", &[(server, 1)])
        ))
        .await;
        let tcp = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws/chat", tcp)
            .await
            .expect("the upgrade goes through waypost");
        assert_eq!(resp.status(), 101);
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("welcome"));
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert!(b[..] == big[..], "1 MiB message changed on the way"),
            other => panic!("expected the binary echo, got {other:?}"),
        }
        let m = metrics(&proxy).await;
        assert_eq!(
            metric(&m, "waypost_forward_upgrades_total", &[]),
            Some(1.0),
            "{m}"
        );
        assert_eq!(
            metric(&m, "waypost_forward_upgrades_open", &[]),
            Some(1.0),
            "{m}"
        );
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        // The server's close frame comes back, then the stream ends.
        let mut closed = false;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(Some(frame))) => {
                    assert_eq!(frame.code, CloseCode::Normal);
                    closed = true;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
        assert!(closed, "the close handshake completed through waypost");
        // The server closed its connection; once the client closes its own, the tunnel ends.
        drop(ws);
        let admin = proxy.admin();
        eventually(SETTLE, || {
            let admin = admin.clone();
            async move {
                let m = get(&format!("{admin}/metrics"), &[]).await.unwrap().text();
                metric(&m, "waypost_forward_upgrades_open", &[]) == Some(0.0)
            }
        })
        .await;
        support::external::promtool_check(metrics(&proxy).await.as_bytes());
    })
    .await;
}

#[tokio::test]
async fn an_upgrade_answered_without_101_is_an_ordinary_response() {
    within(LIMIT, async {
        let up = Upstream::start("plain").await;
        let proxy = TestProxy::in_front_of(&up).await;
        let got = get(
            &format!("{}/headers", proxy.url()),
            &[
                ("host", "echo"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-instance"), "plain");
        let seen = got.text().to_ascii_lowercase();
        assert!(
            seen.contains("upgrade: websocket"),
            "the upgrade went up: {seen}"
        );
        // The connection goes on as a plain one.
        let again = get(&format!("{}/", proxy.url()), &[("host", "echo")])
            .await
            .unwrap();
        assert_eq!(again.status, 200);
        let m = metrics(&proxy).await;
        assert_eq!(
            metric(&m, "waypost_forward_upgrades_total", &[]),
            Some(0.0),
            "{m}"
        );
    })
    .await;
}
