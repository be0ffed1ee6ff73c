//! A tiny authoritative DNS server on 127.0.0.1 (UDP) for the tests of backends by name: the
//! test sets each name's answer (addresses and TTL, SERVFAIL, NXDOMAIN, or silence) at run
//! time, and counts the questions asked.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the server says for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// These addresses (those of the family asked), with this TTL in seconds.
    Addresses(Vec<IpAddr>, u32),
    ServFail,
    NxDomain,
    /// No answer at all: the resolver times out.
    Silent,
}

#[derive(Debug, Default)]
struct Zone {
    answers: Mutex<HashMap<String, DnsAnswer>>,
    queries: AtomicU64,
}

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// Starts on a free UDP port of 127.0.0.1; every name is NXDOMAIN until set.
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Zone::default());
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                z.queries.fetch_add(1, SeqCst);
                if let Some(reply) = answer(&z, &buf[..n]) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        DnsServer { addr, zone, task }
    }

    /// `name` answers with `ips`, good for `ttl` seconds.
    pub fn set(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        self.answer(name, DnsAnswer::Addresses(ips.to_vec(), ttl));
    }

    pub fn answer(&self, name: &str, answer: DnsAnswer) {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        self.zone.answers.lock().unwrap().insert(key, answer);
    }

    /// Questions received so far (A and AAAA count one each).
    pub fn queries(&self) -> u64 {
        self.zone.queries.load(SeqCst)
    }
}

fn answer(zone: &Zone, packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let query = request.queries.first()?.clone();
    let name = query.name().to_ascii();
    let key = name.trim_end_matches('.').to_ascii_lowercase();
    let found = zone.answers.lock().unwrap().get(&key).cloned();
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.add_query(query.clone());
    match found.unwrap_or(DnsAnswer::NxDomain) {
        DnsAnswer::Silent => return None,
        DnsAnswer::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
        DnsAnswer::NxDomain => reply.metadata.response_code = ResponseCode::NXDomain,
        DnsAnswer::Addresses(ips, ttl) => {
            for ip in ips {
                let rdata = match (ip, query.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(query.name().clone(), ttl, rdata));
            }
        }
    }
    reply.to_vec().ok()
}
