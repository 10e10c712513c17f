//! One-shot mDNS queries from an ephemeral port ("legacy unicast", RFC 6762 §6.7), which
//! responders answer at once and by unicast.
//!
//! Why: RFC 6762 §6 forbids multicasting a record more than once per second per interface, and
//! mdns-sd obeys. A node that starts within a second of its peers misses their announcements
//! (it was not listening yet) and its multicast browse query is then answered only once their
//! one-second window has passed: measured on 10 namespaces started together, the last starter
//! knew everyone after 1.04–1.08 s. A legacy query is exempt from the rate limit (its answer
//! is unicast), so sending one at start and after every interface change closes that gap.
//! mdns-sd still does everything else (announcing, answering, browsing, goodbyes).
//!
//! The answers are parsed with `simple-dns`, treating every byte as hostile: bounded packet
//! size, bounded record count, the transaction id must match ours and the source port must be
//! 5353.

use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, QCLASS, QTYPE, Question, TYPE};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// mDNS port and groups.
const MDNS_PORT: u16 = 5353;
const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
/// Receive buffer: mDNS packets are at most 9000 bytes (RFC 6762 §17).
pub const MAX_PACKET_BYTES: usize = 9_000;
/// Records looked at per answer packet (answers + additionals).
pub const MAX_RECORDS_PER_PACKET: usize = 256;

/// A service instance as read from one answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// `<instance>.<service type>.` (with the trailing dot, as mdns-sd writes it).
    pub(crate) fullname: String,
    pub(crate) port: u16,
    pub(crate) txt: HashMap<String, String>,
    pub(crate) addrs: Vec<IpAddr>,
}

/// A usable interface: name, address, index.
pub(crate) type Iface = (String, IpAddr, u32);

#[derive(Debug)]
pub(crate) struct LegacyQuerier {
    sock: tokio::net::UdpSocket,
    v4: bool,
    id: u16,
    query: Vec<u8>,
    buf: Vec<u8>,
    service_type: String,
}

impl LegacyQuerier {
    /// An ephemeral-port socket of the node's family that asks for PTR `service_type`.
    pub(crate) fn new(v4: bool, service_type: &str, id: u16) -> io::Result<Self> {
        let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if v4 {
            sock.set_multicast_ttl_v4(255)?;
            sock.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
        } else {
            sock.set_only_v6(true)?;
            sock.set_multicast_hops_v6(255)?;
            sock.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
        }
        sock.set_nonblocking(true)?;
        let sock = tokio::net::UdpSocket::from_std(sock.into())?;
        let ty = service_type.trim_end_matches('.');
        let query = build_query(id, ty)?;
        Ok(Self {
            sock,
            v4,
            id,
            query,
            buf: vec![0; MAX_PACKET_BYTES],
            service_type: ty.to_ascii_lowercase(),
        })
    }

    /// Sends the query out of every interface of our family; returns how many went out.
    pub(crate) fn send(&self, ifaces: &[Iface]) -> usize {
        let sref = SockRef::from(&self.sock);
        let mut sent = 0;
        for (name, ip, index) in ifaces {
            let (set, to) = match ip {
                IpAddr::V4(v4) if self.v4 => (
                    sref.set_multicast_if_v4(v4),
                    SocketAddr::from((GROUP_V4, MDNS_PORT)),
                ),
                IpAddr::V6(_) if !self.v4 => (
                    sref.set_multicast_if_v6(*index),
                    SocketAddr::from((GROUP_V6, MDNS_PORT)),
                ),
                _ => continue,
            };
            match set.and_then(|()| self.sock.try_send_to(&self.query, to)) {
                Ok(_) => sent += 1,
                Err(e) => {
                    tracing::debug!(interface = %name, error = %e, "legacy mDNS query not sent")
                }
            }
        }
        sent
    }

    /// Waits for the next answer and returns the instances in it (empty for junk).
    pub(crate) async fn recv(&mut self) -> io::Result<Vec<Record>> {
        let (n, from) = self.sock.recv_from(&mut self.buf).await?;
        if from.port() != MDNS_PORT {
            return Ok(Vec::new());
        }
        Ok(parse_answer(&self.buf[..n], self.id, &self.service_type))
    }
}

/// A PTR question for `service_type` (no trailing dot), without the unicast-response bit: the
/// ephemeral source port alone makes it a legacy query.
fn build_query(id: u16, service_type: &str) -> io::Result<Vec<u8>> {
    let name = Name::new(service_type).map_err(|e| io::Error::other(e.to_string()))?;
    let mut q = Packet::new_query(id);
    q.questions.push(Question::new(
        name,
        QTYPE::TYPE(TYPE::PTR),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    q.build_bytes_vec()
        .map_err(|e| io::Error::other(e.to_string()))
}

fn name_key(n: &Name<'_>) -> String {
    n.to_string().to_ascii_lowercase()
}

/// The instances of `service_type` (lower case, no trailing dot) in an answer to query `id`.
pub(crate) fn parse_answer(bytes: &[u8], id: u16, service_type: &str) -> Vec<Record> {
    if bytes.len() > MAX_PACKET_BYTES {
        return Vec::new();
    }
    let Ok(p) = Packet::parse(bytes) else {
        return Vec::new();
    };
    if p.id() != id {
        return Vec::new();
    }
    let records: Vec<_> = p
        .answers
        .iter()
        .chain(p.additional_records.iter())
        .take(MAX_RECORDS_PER_PACKET)
        .collect();
    let mut instances: Vec<String> = Vec::new();
    let mut srv: HashMap<String, (u16, String)> = HashMap::new();
    let mut txt: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut addrs: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for rr in records {
        let owner = name_key(&rr.name);
        match &rr.rdata {
            RData::PTR(ptr) if owner == service_type => {
                let inst = name_key(&ptr.0);
                if !instances.contains(&inst) {
                    instances.push(inst);
                }
            }
            RData::SRV(s) => {
                srv.insert(owner, (s.port, name_key(&s.target)));
            }
            RData::TXT(t) => {
                let props = t
                    .attributes()
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.unwrap_or_default()))
                    .collect();
                txt.insert(owner, props);
            }
            RData::A(a) => addrs
                .entry(owner)
                .or_default()
                .push(IpAddr::V4(Ipv4Addr::from(a.address))),
            RData::AAAA(a) => addrs
                .entry(owner)
                .or_default()
                .push(IpAddr::V6(Ipv6Addr::from(a.address))),
            _ => {}
        }
    }
    instances
        .into_iter()
        .filter_map(|inst| {
            let (port, host) = srv.get(&inst)?.clone();
            Some(Record {
                fullname: format!("{inst}."),
                port,
                txt: txt.get(&inst).cloned().unwrap_or_default(),
                addrs: addrs.get(&host).cloned().unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::ResourceRecord;
    use simple_dns::rdata::{A, PTR, SRV, TXT};

    const TY: &str = "_aware._udp.local";

    fn answer(id: u16, instance: &str, port: u16, props: &[(&str, &str)], ip: [u8; 4]) -> Vec<u8> {
        let mut p = Packet::new_reply(id);
        let inst = Name::new_unchecked(instance);
        let host = Name::new_unchecked("aware-x.local");
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked(TY),
            CLASS::IN,
            10,
            RData::PTR(PTR(inst.clone())),
        ));
        p.additional_records.push(ResourceRecord::new(
            inst.clone(),
            CLASS::IN,
            10,
            RData::SRV(SRV {
                priority: 0,
                weight: 0,
                port,
                target: host.clone(),
            }),
        ));
        let mut t = TXT::new();
        for (k, v) in props {
            t.add_attribute(k, Some(v.as_bytes())).expect("txt");
        }
        p.additional_records
            .push(ResourceRecord::new(inst, CLASS::IN, 10, RData::TXT(t)));
        p.additional_records.push(ResourceRecord::new(
            host,
            CLASS::IN,
            10,
            RData::A(A {
                address: u32::from(Ipv4Addr::from(ip)),
            }),
        ));
        p.build_bytes_vec_compressed().expect("build")
    }

    #[test]
    fn reads_an_instance_from_an_answer() {
        let bytes = answer(
            7,
            "0000000000000abc._aware._udp.local",
            7946,
            &[("v", "1"), ("node", "0000000000000abc"), ("colony", "blue")],
            [10, 77, 0, 3],
        );
        let got = parse_answer(&bytes, 7, TY.to_ascii_lowercase().as_str());
        assert_eq!(got.len(), 1, "{got:?}");
        let r = &got[0];
        assert_eq!(r.fullname, "0000000000000abc._aware._udp.local.");
        assert_eq!(r.port, 7946);
        assert_eq!(r.txt.get("colony").map(String::as_str), Some("blue"));
        assert_eq!(r.addrs, vec![IpAddr::from([10, 77, 0, 3])]);
    }

    #[test]
    fn ignores_junk_other_ids_and_other_types() {
        let bytes = answer(7, "x._aware._udp.local", 1, &[], [10, 0, 0, 1]);
        assert!(parse_answer(&bytes, 8, TY).is_empty(), "wrong id");
        assert!(parse_answer(&bytes, 7, "_other._udp.local").is_empty());
        assert!(parse_answer(b"\x00\x07garbage", 7, TY).is_empty());
        assert!(parse_answer(&[], 7, TY).is_empty());
        // Truncations of a good answer never panic.
        for n in 0..bytes.len() {
            let _ = parse_answer(&bytes[..n], 7, TY);
        }
    }

    #[test]
    fn the_query_asks_for_our_type() {
        let q = build_query(99, TY).expect("query");
        let p = Packet::parse(&q).expect("parses");
        assert_eq!(p.id(), 99);
        assert_eq!(p.questions.len(), 1);
        assert_eq!(p.questions[0].qname.to_string(), TY);
        assert!(!p.questions[0].unicast_response);
    }
}
