//! The Redis Cluster of a `CHORUS_REDIS_MODE=cluster` run, as the `primary-kill` fault sees it: a
//! RESP client just big enough for `CLUSTER NODES`, `CLUSTER INFO`, `INFO`, `CONFIG GET` and
//! `ROLE` (one short connection per command), and the cluster's topology. Its servers are
//! `script/server`'s (`start_cluster_redis` in script/lib.sh, which also starts a killed one
//! again on its directory: `cluster.rs`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// A text reply (simple or bulk string) as a string.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Parses one reply at the start of `buf`: `None` while it is incomplete, else the reply and the
/// bytes it took.
fn parse(buf: &[u8]) -> Option<Result<(Resp, usize), String>> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    let after = end + 2;
    let int = || line.parse::<i64>().map_err(|_| format!("bad RESP length {line:?}"));
    Some(match buf.first() {
        Some(b'+') => Ok((Resp::Simple(line), after)),
        Some(b'-') => Ok((Resp::Error(line), after)),
        Some(b':') => int().map(|n| (Resp::Int(n), after)),
        Some(b'$') => match int() {
            Err(e) => Err(e),
            Ok(n) if n < 0 => Ok((Resp::Bulk(None), after)),
            Ok(n) => {
                let n = n as usize;
                if buf.len() < after + n + 2 {
                    return None;
                }
                Ok((Resp::Bulk(Some(buf[after..after + n].to_vec())), after + n + 2))
            }
        },
        Some(b'*') => match int() {
            Err(e) => Err(e),
            Ok(n) if n < 0 => Ok((Resp::Array(None), after)),
            Ok(n) => {
                let mut items = Vec::with_capacity(n as usize);
                let mut at = after;
                for _ in 0..n {
                    match parse(&buf[at..])? {
                        Ok((item, used)) => {
                            items.push(item);
                            at += used;
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
                Ok((Resp::Array(Some(items)), at))
            }
        },
        _ => Err(format!("unexpected RESP type in {:?}", String::from_utf8_lossy(&buf[..end]))),
    })
}

/// Sends one command to the Redis on 127.0.0.1:`port` and returns its reply (an error reply is
/// an `Err`). Gives up after 2 s: a node that is down or busy must not hold the fault up.
pub async fn command(port: u16, args: &[&str]) -> Result<Resp, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!(":{port}: {e}"))?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request).await.map_err(|e| format!(":{port}: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(parsed) = parse(&buf) {
                return match parsed? {
                    (Resp::Error(e), _) => Err(format!(":{port} {}: {e}", args.join(" "))),
                    (reply, _) => Ok(reply),
                };
            }
            let n = stream.read(&mut chunk).await.map_err(|e| format!(":{port}: {e}"))?;
            if n == 0 {
                return Err(format!(":{port} closed the connection"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.map_err(|_| format!(":{port}: no answer in 2 s"))?
}

/// `field:value` lines of an `INFO` or `CLUSTER INFO` reply.
pub async fn info(port: u16, args: &[&str]) -> Result<Vec<(String, String)>, String> {
    let text = command(port, args).await?.text().ok_or("INFO: not text")?;
    Ok(text.lines().filter_map(|l| l.trim_end().split_once(':')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

fn field(info: &[(String, String)], key: &str) -> Option<String> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// The hash slot of `key` (CRC16-XMODEM mod 16384, of its hash tag if it has one), as
/// `CLUSTER KEYSLOT` computes it.
pub fn key_slot(key: &str) -> u16 {
    let mut bytes = key.as_bytes();
    if let Some(open) = bytes.iter().position(|b| *b == b'{') {
        if let Some(len) = bytes[open + 1..].iter().position(|b| *b == b'}') {
            if len > 0 {
                bytes = &bytes[open + 1..open + 1 + len];
            }
        }
    }
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// Flagged `fail` or `fail?` by the node asked.
    pub failing: bool,
    /// The primary of a replica.
    pub primary_id: Option<String>,
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    pub fn slot_count(&self) -> u32 {
        self.slots.iter().map(|(a, b)| u32::from(b - a) + 1).sum()
    }
}

pub fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // 127.0.0.1:7000@17000[,hostname]
            let port = fields[1].split(['@', ',']).next()?.rsplit(':').next()?.parse().ok()?;
            let flags = fields[2];
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('[')) // a slot being imported or migrated
                .filter_map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_owned(),
                port,
                primary: flags.contains("master"),
                failing: flags.split(',').any(|f| f == "fail" || f == "fail?"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// The cluster as the first of `ports` that answers sees it.
pub async fn topology(ports: &[u16]) -> Result<Vec<ClusterNode>, String> {
    let mut last = String::from("no Redis Cluster node to ask");
    for &port in ports {
        match command(port, &["CLUSTER", "NODES"]).await {
            Ok(reply) => return Ok(parse_nodes(&reply.text().unwrap_or_default())),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The pid of the `redis-server` on `port` (`INFO server`), checked to be one on this machine.
pub async fn pid_of(port: u16) -> Result<u32, String> {
    let server = info(port, &["INFO", "server"]).await?;
    let pid: u32 = field(&server, "process_id").and_then(|p| p.parse().ok()).ok_or("INFO: no process_id")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("redis-server") {
        return Err(format!("pid {pid} (Redis on :{port}) is not a redis-server on this machine"));
    }
    Ok(pid)
}

/// `ROLE` of the node on `port`: `Some(primary port)` once it is a replica whose link to its
/// primary is up.
pub async fn replica_of(port: u16) -> Option<u16> {
    let Ok(Resp::Array(Some(role))) = command(port, &["ROLE"]).await else { return None };
    // ["slave", host, port, "connected", offset]
    let kind = role.first().and_then(Resp::text)?;
    let state = role.get(3).and_then(Resp::text)?;
    if kind != "slave" || state != "connected" {
        return None;
    }
    match role.get(2)? {
        Resp::Int(p) => u16::try_from(*p).ok(),
        other => other.text()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_is_redis_crc16_of_the_hash_tag() {
        // The Redis Cluster spec's check value: CRC16 of "123456789" is 0x31C3.
        assert_eq!(key_slot("123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("chorus:{p:7}room:x"), key_slot("p:7"));
        assert_eq!(key_slot("a{}b"), key_slot("a{}b"));
    }

    #[test]
    fn parses_replies_and_waits_for_incomplete_ones() {
        let buf = b"*2\r\n$4\r\nport\r\n$4\r\n7000\r\n";
        let (reply, used) = parse(buf).and_then(Result::ok).expect("complete");
        assert_eq!(used, buf.len());
        assert_eq!(
            reply,
            Resp::Array(Some(vec![Resp::Bulk(Some(b"port".to_vec())), Resp::Bulk(Some(b"7000".to_vec()))]))
        );
        assert!(parse(&buf[..buf.len() - 3]).is_none());
        assert!(parse(b"$5\r\nab").is_none());
        assert_eq!(parse(b"-ERR no\r\n").and_then(Result::ok).map(|r| r.0), Some(Resp::Error("ERR no".into())));
        assert_eq!(parse(b":-3\r\n").and_then(Result::ok).map(|r| r.0), Some(Resp::Int(-3)));
    }

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b2]
b2 127.0.0.1:7001@17001,host master,fail - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 slave a1 0 0 1 connected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!((nodes[0].port, nodes[0].primary, nodes[0].failing), (7000, true, false));
        assert_eq!(nodes[0].slots, vec![(0, 5460)]);
        assert_eq!(nodes[0].slot_count(), 5461);
        assert!(nodes[1].failing && nodes[1].serves(6000) && !nodes[1].serves(1));
        assert_eq!((nodes[2].primary, nodes[2].primary_id.as_deref()), (false, Some("a1")));
    }
}
