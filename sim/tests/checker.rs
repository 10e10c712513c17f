//! The checker must catch what it claims to catch: feed it broken histories.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use aware_sim::checker::Checker;
use dna::{AbdicateReason, Event};
use swarm_core::wire::Version;
use swarm_core::{NodeId, Time};

/// Feeds one event; node clocks equal global time here.
fn feed(c: &mut Checker, at_us: u64, index: usize, event: Event) -> usize {
    c.on_event(at_us, index, NodeId(index as u64 + 1), &event, |t: Time| {
        t.0
    });
    c.violations.len()
}

fn v(term: u64, seq: u64) -> Version {
    Version { term, seq }
}

fn crowned(term: u64, inherited: Version) -> Event {
    Event::Crowned {
        term,
        roster: 5,
        inherited,
    }
}

#[test]
fn two_queens_in_one_term_is_a_violation() {
    let mut c = Checker::default();
    assert_eq!(feed(&mut c, 10, 0, crowned(3, v(0, 0))), 0);
    assert_eq!(
        feed(&mut c, 20, 1, crowned(3, v(0, 0))),
        1,
        "{:?}",
        c.violations
    );
}

#[test]
fn overlapping_queen_leases_are_a_violation() {
    let mut c = Checker::default();
    feed(
        &mut c,
        10,
        0,
        Event::Reigns {
            term: 3,
            until: Time(500),
        },
    );
    assert_eq!(
        feed(
            &mut c,
            400,
            1,
            Event::Reigns {
                term: 4,
                until: Time(900)
            }
        ),
        1,
        "{:?}",
        c.violations
    );
    // After abdication, no overlap.
    let mut c = Checker::default();
    feed(
        &mut c,
        10,
        0,
        Event::Reigns {
            term: 3,
            until: Time(500),
        },
    );
    feed(
        &mut c,
        300,
        0,
        Event::Abdicated {
            term: 3,
            reason: AbdicateReason::Handover,
        },
    );
    assert_eq!(
        feed(
            &mut c,
            400,
            1,
            Event::Reigns {
                term: 4,
                until: Time(900)
            }
        ),
        0,
        "{:?}",
        c.violations
    );
}

#[test]
fn obeying_a_lower_term_or_two_live_leases_is_a_violation() {
    let mut c = Checker::default();
    feed(
        &mut c,
        10,
        5,
        Event::Obeyed {
            term: 4,
            queen: NodeId(1),
            until: Time(1000),
        },
    );
    let two_leases = feed(
        &mut c,
        20,
        5,
        Event::Obeyed {
            term: 5,
            queen: NodeId(2),
            until: Time(1020),
        },
    );
    assert_eq!(two_leases, 1, "{:?}", c.violations);
    let lower = feed(
        &mut c,
        2000,
        5,
        Event::Obeyed {
            term: 3,
            queen: NodeId(3),
            until: Time(3000),
        },
    );
    assert_eq!(lower, 2, "{:?}", c.violations);
    // A released lease (QueenLost) makes way for the next queen.
    let mut c = Checker::default();
    feed(
        &mut c,
        10,
        5,
        Event::Obeyed {
            term: 4,
            queen: NodeId(1),
            until: Time(1000),
        },
    );
    feed(
        &mut c,
        15,
        5,
        Event::QueenLost {
            term: 4,
            queen: NodeId(1),
        },
    );
    assert_eq!(
        feed(
            &mut c,
            20,
            5,
            Event::Obeyed {
                term: 5,
                queen: NodeId(2),
                until: Time(1020)
            }
        ),
        0
    );
}

#[test]
fn commits_going_backwards_or_diverging_or_lost_are_violations() {
    let mut c = Checker::default();
    feed(
        &mut c,
        10,
        0,
        Event::Committed {
            version: v(2, 1),
            digest: 7,
        },
    );
    assert_eq!(
        feed(
            &mut c,
            20,
            0,
            Event::Committed {
                version: v(2, 0),
                digest: 6
            }
        ),
        1,
        "backwards"
    );
    assert_eq!(
        feed(
            &mut c,
            30,
            1,
            Event::Committed {
                version: v(2, 1),
                digest: 8
            }
        ),
        2,
        "diverging"
    );
    assert_eq!(
        feed(&mut c, 40, 3, crowned(3, v(1, 9))),
        4,
        "lost commits 2.0 and 2.1: {:?}",
        c.violations
    );
    // A commit observed after a later term's crowning is checked too.
    assert_eq!(
        feed(
            &mut c,
            50,
            4,
            Event::Committed {
                version: v(2, 5),
                digest: 1
            }
        ),
        5,
        "late-observed lost commit"
    );
    // Inheriting everything committed is fine.
    assert_eq!(
        feed(&mut c, 60, 5, crowned(4, v(3, 0))),
        5,
        "{:?}",
        c.violations
    );
}
