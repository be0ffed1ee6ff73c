//! A real `nats-server -js` on loopback for the fleet tests (Debian's `nats-server` package;
//! `.ci/run` installs it). Its JetStream store lives in a temp dir that survives a restart, so a
//! test can kill the server and bring it back with its streams.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

#[derive(Debug)]
pub struct NatsServer {
    pub addr: SocketAddr,
    store: TempDir,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join("nats-server");
        if p.exists() {
            return p;
        }
    }
    panic!("nats-server is not installed: apt-get install nats-server (the fleet tests start one)");
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = NatsServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Publishes `payload` on `subject` as any NATS client could (core NATS, its text
    /// protocol), and returns once the server has taken it (its PONG after the PUB).
    pub fn publish(&self, subject: &str, payload: &[u8]) {
        self.publish_with_header(subject, None, payload);
    }

    /// [`NatsServer::publish`] with a header `(name, value)` (HPUB), as a client that signs or
    /// forges a signature would send it.
    pub fn publish_with_header(&self, subject: &str, header: Option<(&str, &str)>, payload: &[u8]) {
        use std::io::Write;
        let (mut s, mut r) = self.connect();
        let mut line = String::new();
        let mut out =
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n".to_vec();
        match header {
            None => {
                out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes())
            }
            Some((name, value)) => {
                let head = format!("NATS/1.0\r\n{name}: {value}\r\n\r\n");
                out.extend_from_slice(
                    format!(
                        "HPUB {subject} {} {}\r\n",
                        head.len(),
                        head.len() + payload.len()
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(head.as_bytes());
            }
        }
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\nPING\r\n");
        s.write_all(&out).unwrap();
        loop {
            next_line(&mut r, &mut line);
            if line.starts_with("PONG") {
                return;
            }
        }
    }

    /// A request as any NATS client makes one (core NATS, a reply inbox of its own): the first
    /// answer's payload, as text. The JetStream API answers this way (`$JS.API.STREAM.INFO.<name>`).
    pub fn request(&self, subject: &str, payload: &[u8]) -> String {
        use std::io::{Read, Write};
        let (mut s, mut r) = self.connect();
        let mut line = String::new();
        let mut out = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.test 1\r\n\
             PUB {subject} _INBOX.test {}\r\n",
            payload.len()
        )
        .into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        s.write_all(&out).unwrap();
        loop {
            next_line(&mut r, &mut line);
            if line.starts_with("PING") {
                s.write_all(b"PONG\r\n").unwrap();
            }
            // MSG <subject> <sid> <bytes>
            if let Some(len) = line
                .strip_prefix("MSG ")
                .and_then(|m| m.split_whitespace().nth(2))
            {
                let mut body = vec![0u8; len.trim().parse::<usize>().unwrap() + 2];
                r.read_exact(&mut body).unwrap();
                body.truncate(body.len() - 2);
                return String::from_utf8(body).unwrap();
            }
        }
    }

    /// A client connection, past the server's INFO line.
    fn connect(&self) -> (TcpStream, std::io::BufReader<TcpStream>) {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        next_line(&mut r, &mut line);
        assert!(line.starts_with("INFO"), "{line}");
        (s, r)
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(binary())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.addr.port().to_string())
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server's next line into `line`; an `-ERR` fails the test.
fn next_line(r: &mut std::io::BufReader<TcpStream>, line: &mut String) {
    use std::io::BufRead;
    line.clear();
    r.read_line(line).unwrap();
    assert!(!line.starts_with("-ERR"), "{line}");
}
