//! A stand-in for a CDN's purge API: the HTTP endpoint `cdn.purge_url` points at during a
//! mass revocation. It counts the calls it gets and the distinct purge tags they name, and
//! can refuse every n-th call (HTTP 503) so that the hook's retries are exercised.
//!
//! The tags are found by their form (`"<issuer name>:<serial hex>"`, the `Cache-Tag` value)
//! wherever they appear in the body, so the count does not depend on the body's layout.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the sink has seen so far.
#[derive(Default)]
pub struct Seen {
    pub calls: u64,
    /// Calls answered 503 on purpose.
    pub refused: u64,
    /// Distinct serials named by accepted calls (the first 16 octets' worth of hex).
    pub tags: HashSet<u128>,
    /// When the last new tag arrived.
    pub last_new_tag: Option<Instant>,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl Sink {
    /// Listens on a free loopback port; refuses every `refuse_every`-th call (0 = none).
    pub fn start(issuer_name: &str, refuse_every: u64) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (shared, needle) = (seen.clone(), format!("\"{issuer_name}:"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (shared, needle) = (shared.clone(), needle.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared, &needle, refuse_every);
                });
            }
        });
        Ok(Sink { addr, seen })
    }
}

/// Answers the requests of one connection (keep-alive or not).
fn serve(stream: TcpStream, seen: &Mutex<Seen>, needle: &str, refuse_every: u64) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let refused = {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.calls += 1;
            let refused = refuse_every > 0 && seen.calls % refuse_every == 0;
            if refused {
                seen.refused += 1;
            } else {
                let before = seen.tags.len();
                seen.tags.extend(tags(&String::from_utf8_lossy(&body), needle));
                if seen.tags.len() > before {
                    seen.last_new_tag = Some(Instant::now());
                }
            }
            refused
        };
        let status = if refused { "503 Service Unavailable" } else { "200 OK" };
        write!(writer, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n")?;
    }
}

/// The serials of every `"<issuer>:<hex>` in `body`.
fn tags<'a>(body: &'a str, needle: &'a str) -> impl Iterator<Item = u128> + 'a {
    body.match_indices(needle).filter_map(move |(at, _)| {
        let hex: String = body[at + needle.len()..].chars().take_while(char::is_ascii_hexdigit).collect();
        u128::from_str_radix(&hex, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_found_wherever_the_body_puts_them() {
        let body =
            r#"{"tags":["mr:4a01","mr:ff"],"items":[{"tag":"mr:4a01","urls":["http://x/mr:zz"]}],"x":"other:12"}"#;
        let found: HashSet<u128> = tags(body, "\"mr:").collect();
        assert_eq!(found, HashSet::from([0x4a01, 0xff]));
    }
}
