//! `/metrics` of real `aware-agent run` processes: three agents on loopback, each serving its
//! Prometheus endpoint on its own port; the scraped values must match what `status --json` says
//! (queen, term, members up, traffic), and a queen's failover must show in a survivor's counters.
//! Every wait has a deadline; the `Colony` guard kills every child.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use common::{Colony, free_ports, one_queen, roster_settled};
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// `GET /metrics` over plain HTTP/1.1: (status line, body).
fn scrape(port: u16) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// The value of one series (`name` or `name{labels}`) in Prometheus text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn wait_metrics(port: u16, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < LIMIT {
        if let Some((_, body)) = scrape(port) {
            if ok(&body) {
                return body;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what} on port {port}; last scrape:\n{last}");
}

#[test]
fn scraped_metrics_match_the_colony() {
    let mut colony = Colony::new(3);
    let ports = free_ports(3);
    colony.metrics_ports = Some(ports.clone());
    colony.start_all();
    let s = colony.wait_for("one queen, every member up and in the roster", LIMIT, |s| {
        one_queen(s).is_some() && roster_settled(s)
    });
    let queen = one_queen(&s).unwrap();
    let qi = s.iter().find(|(_, st)| st.node == queen).unwrap().0;
    let term = s[0].1.term;

    let (line, body) = scrape(ports[qi]).unwrap();
    assert!(line.contains("200"), "{line}");
    assert_eq!(value(&body, "aware_is_queen"), Some(1.0), "{body}");
    assert_eq!(value(&body, "aware_has_queen"), Some(1.0), "{body}");
    assert_eq!(value(&body, "aware_term"), Some(term as f64), "{body}");
    assert_eq!(
        value(&body, "aware_members{state=\"up\"}"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(value(&body, "aware_status_up"), Some(1.0), "{body}");
    assert!(
        value(&body, "aware_elections_total").unwrap() >= 1.0,
        "{body}"
    );
    for series in [
        "aware_packets_received_total",
        "aware_packets_sent_total",
        "aware_bytes_received_total{channel=\"swim\"}",
        "aware_bytes_sent_total{channel=\"swim\"}",
        "aware_bytes_received_total{channel=\"colony\"}",
        "aware_bytes_sent_total{channel=\"colony\"}",
    ] {
        assert!(
            value(&body, series).unwrap_or(0.0) > 0.0,
            "{series}: {body}"
        );
    }
    assert!(body.contains("# HELP aware_members"), "{body}");
    // The node certificate, self-issued at this start: valid for a year from about now.
    let expiry = value(&body, "aware_certificate_expiry_timestamp_seconds").unwrap_or(0.0);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expiry - now_s - 365.0 * 86_400.0).abs() < 86_400.0,
        "expiry {expiry}, now {now_s}: {body}"
    );
    assert!(
        body.contains("aware_drops_total{reason=\"rejected\"}"),
        "{body}"
    );

    // `--log-format json` (AWARE_LOG_FORMAT): every log line is one JSON object.
    let log = std::fs::read_to_string(colony.log(qi)).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "crowned queen"
                && l["level"] == "INFO"
                && l["timestamp"].is_string()),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "metrics endpoint listening on /metrics"),
        "{log}"
    );

    let worker = (0..3).find(|i| *i != qi).unwrap();
    let body = scrape(ports[worker]).unwrap().1;
    assert_eq!(value(&body, "aware_is_queen"), Some(0.0), "{body}");
    assert_eq!(
        value(&body, "aware_failovers_total").unwrap_or(0.0),
        0.0,
        "{body}"
    );

    // A failover shows at the survivors: the queen lost, a new one crowned.
    colony.kill9(qi);
    let body = wait_metrics(ports[worker], "a failover", |b| {
        value(b, "aware_failovers_total").unwrap_or(0.0) >= 1.0
            && value(b, "aware_term").unwrap_or(0.0) > term as f64
    });
    assert!(
        value(&body, "aware_queen_lost_total").unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    wait_metrics(ports[worker], "the dead queen counted down", |b| {
        value(b, "aware_members{state=\"down\"}") == Some(1.0)
    });
}

#[test]
fn a_taken_configured_metrics_address_stops_the_agent() {
    let mut colony = Colony::new(1);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    colony.metrics_ports = Some(vec![held.local_addr().unwrap().port()]);
    colony.start(0);
    let start = Instant::now();
    let code = loop {
        if let Some(code) = colony.agents[0].child.as_mut().unwrap().try_wait().unwrap() {
            break code;
        }
        assert!(start.elapsed() < LIMIT, "the agent kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    colony.agents[0].child = None;
    assert!(!code.success());
    let log = std::fs::read_to_string(colony.log(0)).unwrap();
    assert!(
        log.contains("cannot listen for metrics on tcp 127.0.0.1:"),
        "{log}"
    );
}
