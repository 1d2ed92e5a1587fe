//! Slow clients cannot hold the responder's connections: a POST body, like a request head,
//! must arrive within a bounded time (`server.body_timeout`, `server.header_timeout`), and
//! the connections held at once are bounded (`server.max_connections`), while normal clients
//! keep being answered.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// What a trickling client saw: how many bytes it got to send, and the server's status line
/// (empty if the connection was closed without one).
struct Trickled {
    sent: usize,
    status_line: String,
    answered_at: Instant,
}

/// Connects, sends `head`, then `body_bytes` bytes one every `pace`, until the server answers
/// or closes; never sends the whole request when the server cuts it.
fn trickle(port: u16, head: &str, body_bytes: usize, pace: Duration) -> thread::JoinHandle<Trickled> {
    let head = head.to_owned();
    thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.write_all(head.as_bytes()).expect("send head");
        let mut reader = stream.try_clone().expect("clone");
        let (answered, got_answer) = mpsc::channel();
        thread::spawn(move || {
            let mut response = Vec::new();
            let _ = reader.read_to_end(&mut response);
            let text = String::from_utf8_lossy(&response);
            let _ = answered.send((text.lines().next().unwrap_or_default().to_owned(), Instant::now()));
        });
        let mut sent = 0;
        loop {
            if let Ok((status_line, answered_at)) = got_answer.recv_timeout(pace) {
                return Trickled { sent, status_line, answered_at };
            }
            if sent < body_bytes && stream.write_all(b"a").is_ok() {
                sent += 1;
            }
        }
    })
}

fn post_head(content_length: usize) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: ocsp.test\r\nContent-Type: application/ocsp-request\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
}

/// An issuer with one imported certificate, and a request for it.
fn request_for_a_known_certificate() -> (Pki, PathBuf, Vec<u8>) {
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let leaf = pki.leaf("patient", "5c01");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, leaf.to_str().unwrap()], &[]);
    let request = pki.request(&leaf, "-sha256");
    (pki, leaf, request)
}

#[test]
fn a_trickled_body_is_cut_while_other_clients_are_answered() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let (_pki, _leaf, request) = request_for_a_known_certificate();
    let server = Server::start(&[("JITOCSP_SERVER_BODY_TIMEOUT", "2s")]);
    // 200 bytes at one a second would hold the connection for over three minutes.
    let slow = trickle(server.port, &post_head(200), 200, Duration::from_secs(1));
    for _ in 0..20 {
        let answer = server.post(&request);
        assert_eq!(answer.status, 200, "a normal client is answered while the slow one trickles");
        assert!(!answer.body.is_empty());
    }
    let slow = slow.join().unwrap();
    assert!(slow.status_line.starts_with("HTTP/1.1 408"), "slow body answered {:?}", slow.status_line);
    assert!(slow.sent < 200, "the server waited for the whole trickled body ({} bytes)", slow.sent);
    assert_eq!(server.metric("jitocsp_slow_bodies_total", &[]), 1.0);
}

#[test]
fn a_trickled_request_head_is_cut() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let server = Server::start(&[("JITOCSP_SERVER_HEADER_TIMEOUT", "2s")]);
    let head = "POST / HTTP/1.1\r\nHost: ocsp.test\r\nX-Slow: ";
    let slow = trickle(server.port, head, 500, Duration::from_secs(1)).join().unwrap();
    assert!(slow.sent < 500, "the server waited for a request head trickled over {} s", slow.sent);
    assert!(
        slow.status_line.is_empty() || slow.status_line.starts_with("HTTP/1.1 408"),
        "slow head answered {:?}",
        slow.status_line
    );
}

#[test]
fn connections_beyond_the_bound_wait_until_a_held_one_is_cut() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let (_pki, _leaf, request) = request_for_a_known_certificate();
    let server = Server::start(&[
        ("JITOCSP_SERVER_WORKERS", "1"),
        ("JITOCSP_SERVER_MAX_CONNECTIONS", "2"),
        ("JITOCSP_SERVER_BODY_TIMEOUT", "3s"),
    ]);
    let held: Vec<_> = (0..2).map(|_| trickle(server.port, &post_head(100), 100, Duration::from_millis(500))).collect();
    // Both slots are taken once the server has accepted both trickling connections.
    server.wait_until(Duration::from_secs(10), |s| s.metric("jitocsp_http_connections", &[]) == 2.0);
    let third = server.post(&request);
    let third_answered = Instant::now();
    assert_eq!(third.status, 200);
    let held: Vec<Trickled> = held.into_iter().map(|h| h.join().unwrap()).collect();
    for h in &held {
        assert!(h.status_line.starts_with("HTTP/1.1 408"), "held connection answered {:?}", h.status_line);
    }
    let first_cut = held.iter().map(|h| h.answered_at).min().unwrap();
    assert!(
        third_answered >= first_cut,
        "a third connection was served while max_connections = 2 were held ({:?} before the first cut)",
        first_cut - third_answered
    );
}
