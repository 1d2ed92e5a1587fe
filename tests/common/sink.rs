//! A local HTTP endpoint that records every request it gets: what a CDN purge hook posts to,
//! or a stand-in for a CDN's purge API.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request the sink got, and the status it answered.
#[derive(Clone, Debug)]
pub struct SinkCall {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub status: u16,
}

impl SinkCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Answers each request (numbered from 0, in arrival order) with the status and body that
/// `answer` gives for it, one connection at a time, for the life of the test process.
pub struct HttpSink {
    pub port: u16,
    calls: Arc<Mutex<Vec<SinkCall>>>,
}

impl HttpSink {
    pub fn start(answer: impl Fn(usize, &str) -> (u16, String) + Send + 'static) -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(mut call) = read_request(&mut stream) else { continue };
                let mut calls = seen.lock().unwrap();
                let (status, reply) = answer(calls.len(), &call.body);
                call.status = status;
                calls.push(call);
                drop(calls);
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{reply}",
                        reply.len()
                    )
                    .as_bytes(),
                );
            }
        });
        HttpSink { port, calls }
    }

    /// A sink that takes everything (200, `{"success": true}`).
    pub fn accepting() -> HttpSink {
        HttpSink::start(|_, _| (200, r#"{"success": true}"#.to_owned()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn calls(&self) -> Vec<SinkCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request (body by Content-Length), not answered yet (status 0).
fn read_request(stream: &mut impl Read) -> Option<SinkCall> {
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buffer[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.lines();
        let mut first = lines.next()?.split(' ');
        let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok());
        let length: usize = length.unwrap_or(0);
        while raw.len() < end + 4 + length {
            let n = stream.read(&mut buffer).ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&buffer[..n]);
        }
        let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + length]).into_owned();
        return Some(SinkCall { method, path, headers, body, status: 0 });
    }
}
