//! The floor under any proxy's CPU per request, for the benchmarks: a TCP relay that makes the
//! system calls a proxy cannot avoid on a keep-alive request and nothing else.
//!
//! `relay --listen 127.0.0.1:18085 --upstream 127.0.0.1:19001=3 --upstream 127.0.0.1:19002=2 …`
//!
//! Each accepted connection gets its own upstream connection, chosen by smooth weighted
//! round-robin, and bytes are copied both ways (`tokio::io::copy_bidirectional`): one read and
//! one write per message and direction, no parsing, no routing, no metrics, no timers. That is
//! the least any proxy on this kernel can do per request, so its CPU time per request, measured
//! beside HAProxy's in the same seconds (`bench/load/run.py --floor`), says how far below
//! HAProxy a proxy can go at all while making the same system calls. It is not a proxy: it
//! forwards to whatever it was started with, and knows nothing of HTTP.

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "A bare TCP relay: the floor for CPU per request in the load harness.")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18085")]
    listen: SocketAddr,
    /// An upstream as ADDR=WEIGHT; repeat for several.
    #[arg(long = "upstream", required = true, value_parser = parse_upstream)]
    upstreams: Vec<(SocketAddr, u32)>,
}

fn parse_upstream(s: &str) -> Result<(SocketAddr, u32), String> {
    let (addr, weight) = s.split_once('=').unwrap_or((s, "1"));
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let weight = weight.parse().map_err(|e| format!("{weight}: {e}"))?;
    Ok((addr, weight))
}

/// Smooth weighted round-robin (nginx's): deterministic, and spread evenly within a cycle.
struct RoundRobin {
    current: Vec<i64>,
    weights: Vec<(SocketAddr, i64)>,
    total: i64,
}

impl RoundRobin {
    fn new(upstreams: &[(SocketAddr, u32)]) -> RoundRobin {
        let weights: Vec<_> = upstreams.iter().map(|&(a, w)| (a, i64::from(w))).collect();
        RoundRobin {
            current: vec![0; weights.len()],
            total: weights.iter().map(|w| w.1).sum(),
            weights,
        }
    }

    fn next(&mut self) -> SocketAddr {
        let mut best = 0;
        for (i, (_, w)) in self.weights.iter().enumerate() {
            self.current[i] += w;
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        self.weights[best].0
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let mut rr = RoundRobin::new(&args.upstreams);
    loop {
        let (mut client, _) = listener.accept().await?;
        let upstream = rr.next();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
