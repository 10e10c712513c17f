//! The checker must catch what it claims to catch: feed it broken histories.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use aware_sim::checker::Checker;
use dna::Event;
use swarm_core::wire::Version;
use swarm_core::{NodeId, Time};

fn ident(t: Time) -> u64 {
    t.0
}

#[test]
fn two_queens_in_one_term_is_a_violation() {
    let mut c = Checker::default();
    c.on_event(
        10,
        0,
        NodeId(1),
        &Event::Crowned { term: 3, roster: 5 },
        ident,
        Version::default(),
    );
    assert!(c.violations.is_empty());
    c.on_event(
        20,
        1,
        NodeId(2),
        &Event::Crowned { term: 3, roster: 5 },
        ident,
        Version::default(),
    );
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
}

#[test]
fn overlapping_queen_leases_are_a_violation() {
    let mut c = Checker::default();
    c.on_event(
        10,
        0,
        NodeId(1),
        &Event::Reigns {
            term: 3,
            until: Time(500),
        },
        ident,
        Version::default(),
    );
    c.on_event(
        400,
        1,
        NodeId(2),
        &Event::Reigns {
            term: 4,
            until: Time(900),
        },
        ident,
        Version::default(),
    );
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    // After abdication, no overlap.
    let mut c = Checker::default();
    c.on_event(
        10,
        0,
        NodeId(1),
        &Event::Reigns {
            term: 3,
            until: Time(500),
        },
        ident,
        Version::default(),
    );
    c.on_event(
        300,
        0,
        NodeId(1),
        &Event::Abdicated {
            term: 3,
            reason: dna::AbdicateReason::Handover,
        },
        ident,
        Version::default(),
    );
    c.on_event(
        400,
        1,
        NodeId(2),
        &Event::Reigns {
            term: 4,
            until: Time(900),
        },
        ident,
        Version::default(),
    );
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

#[test]
fn obeying_a_lower_term_or_two_live_leases_is_a_violation() {
    let mut c = Checker::default();
    c.on_event(
        10,
        5,
        NodeId(9),
        &Event::Obeyed {
            term: 4,
            queen: NodeId(1),
            until: Time(1000),
        },
        ident,
        Version::default(),
    );
    c.on_event(
        20,
        5,
        NodeId(9),
        &Event::Obeyed {
            term: 5,
            queen: NodeId(2),
            until: Time(1020),
        },
        ident,
        Version::default(),
    );
    assert_eq!(c.violations.len(), 1, "two live leases: {:?}", c.violations);
    c.on_event(
        2000,
        5,
        NodeId(9),
        &Event::Obeyed {
            term: 3,
            queen: NodeId(3),
            until: Time(3000),
        },
        ident,
        Version::default(),
    );
    assert_eq!(c.violations.len(), 2, "lower term: {:?}", c.violations);
}

#[test]
fn commits_going_backwards_or_diverging_or_lost_are_violations() {
    let v = |term, seq| Version { term, seq };
    let mut c = Checker::default();
    c.on_event(
        10,
        0,
        NodeId(1),
        &Event::Committed {
            version: v(2, 1),
            digest: 7,
        },
        ident,
        v(2, 1),
    );
    c.on_event(
        20,
        0,
        NodeId(1),
        &Event::Committed {
            version: v(2, 0),
            digest: 6,
        },
        ident,
        v(2, 1),
    );
    assert_eq!(c.violations.len(), 1, "backwards: {:?}", c.violations);
    c.on_event(
        30,
        1,
        NodeId(2),
        &Event::Committed {
            version: v(2, 1),
            digest: 8,
        },
        ident,
        v(2, 1),
    );
    assert_eq!(c.violations.len(), 2, "diverging: {:?}", c.violations);
    c.on_event(
        40,
        3,
        NodeId(4),
        &Event::Crowned { term: 3, roster: 3 },
        ident,
        v(1, 9),
    );
    assert_eq!(c.violations.len(), 3, "lost commit: {:?}", c.violations);
}
