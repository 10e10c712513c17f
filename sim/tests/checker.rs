//! The checker must catch what it claims to catch: feed it broken histories.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use aware_sim::checker::Checker;
use dna::{AbdicateReason, Event};
use swarm_core::wire::Version;
use swarm_core::{NodeId, Time};

/// Feeds one event; node clocks equal global time here.
fn feed(c: &mut Checker, at_us: u64, index: usize, event: Event) -> usize {
    feed_with(c, at_us, index, event, &|_| Time(at_us))
}

/// Feeds one event; `clocks(i)` is what node `i`'s clock reads at `at_us`.
fn feed_with(
    c: &mut Checker,
    at_us: u64,
    index: usize,
    event: Event,
    clocks: &dyn Fn(usize) -> Time,
) -> usize {
    c.on_event(at_us, index, NodeId(index as u64 + 1), &event, clocks);
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

/// The queen's clock stalls after she emitted `Reigns` (a backward step, or a machine suspend
/// that a clock without suspend time does not count): her lease runs on in real time past the
/// moment her `until` would have been reached at her old rate. A second queen whose lease starts
/// in that stretch overlaps her in real time, and the checker must say so. Judged at emission
/// time (as the checker once did), the first lease would have ended at t=650 and nothing would
/// be reported.
#[test]
fn a_lease_stretched_by_a_later_clock_stall_overlaps() {
    let mut c = Checker::default();
    // Queen 0 reigns until 650 on her clock, which reads global time so far.
    let reigns = Event::Reigns {
        term: 3,
        until: Time(650),
    };
    assert_eq!(feed(&mut c, 10, 0, reigns.clone()), 0);
    // At t=900 queen 1 (term 4) reigns; queen 0's clock stalled at 300 (a step back of 600 µs
    // at t=300), so she still believes she reigns.
    let stalled = |i: usize| if i == 0 { Time(300) } else { Time(900) };
    let second = Event::Reigns {
        term: 4,
        until: Time(1500),
    };
    assert_eq!(
        feed_with(&mut c, 900, 1, second.clone(), &stalled),
        1,
        "{:?}",
        c.violations
    );
    assert!(c.violations[0].contains("still holds her lease"));
    // Control: with queen 0's clock running normally her lease has ended by t=900.
    let mut c = Checker::default();
    feed(&mut c, 10, 0, reigns);
    assert_eq!(feed(&mut c, 900, 1, second), 0, "{:?}", c.violations);
}

/// A worker's lease is judged on its own clock too: stalled, it still runs.
#[test]
fn a_worker_lease_stretched_by_a_stall_still_fences() {
    let mut c = Checker::default();
    let obeyed = |term, queen| Event::Obeyed {
        term,
        queen: NodeId(queen),
        until: Time(1000),
    };
    feed(&mut c, 0, 5, obeyed(4, 1));
    let stalled = |_: usize| Time(900);
    assert_eq!(
        feed_with(&mut c, 2000, 5, obeyed(5, 2), &stalled),
        1,
        "{:?}",
        c.violations
    );
}

/// An already-expired lease promises nothing and overlaps nothing.
#[test]
fn an_expired_reigns_is_no_lease() {
    let mut c = Checker::default();
    feed(
        &mut c,
        10,
        1,
        Event::Reigns {
            term: 4,
            until: Time(2000),
        },
    );
    assert_eq!(
        feed(
            &mut c,
            1000,
            0,
            Event::Reigns {
                term: 3,
                until: Time(650)
            }
        ),
        0,
        "{:?}",
        c.violations
    );
}

#[test]
fn a_stale_term_heartbeat_or_state_is_a_violation() {
    let mut c = Checker::default();
    let node = NodeId(6);
    c.on_term(0, 5, node, 7);
    // The worker never obeyed anyone, so only the held term can tell this is stale.
    assert_eq!(
        feed(
            &mut c,
            10,
            5,
            Event::Obeyed {
                term: 6,
                queen: NodeId(1),
                until: Time(1000),
            }
        ),
        1,
        "{:?}",
        c.violations
    );
    assert_eq!(
        feed(
            &mut c,
            20,
            5,
            Event::Accepted {
                version: v(6, 3),
                digest: 1,
            }
        ),
        2,
        "{:?}",
        c.violations
    );
    // Its own term is fine (once the lease it obeyed has run out).
    assert_eq!(
        feed(
            &mut c,
            3000,
            5,
            Event::Obeyed {
                term: 7,
                queen: NodeId(2),
                until: Time(2000),
            }
        ),
        2,
        "{:?}",
        c.violations
    );
}

#[test]
fn a_term_going_backwards_is_a_violation() {
    let mut c = Checker::default();
    c.on_term(0, 1, NodeId(2), 4);
    c.on_term(10, 1, NodeId(2), 5);
    assert!(c.violations.is_empty());
    // E.g. a restart from a disk that lost the term.
    c.on_term(20, 1, NodeId(2), 3);
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
}

#[test]
fn two_votes_in_one_term_are_a_violation() {
    let mut c = Checker::default();
    let me = NodeId(9);
    c.on_persist(0, 2, me, 3, Some(NodeId(1)));
    c.on_persist(1, 2, me, 3, Some(NodeId(1))); // the same vote again
    c.on_persist(2, 2, me, 3, None); // a snapshot without it (a restart that lost it)
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    c.on_persist(3, 2, me, 3, Some(NodeId(4)));
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    c.on_persist(4, 2, me, 4, Some(NodeId(1))); // a new term, a new vote
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
}

#[test]
fn an_accepted_version_with_two_contents_is_a_violation() {
    let mut c = Checker::default();
    let accepted = |digest| Event::Accepted {
        version: v(2, 1),
        digest,
    };
    feed(&mut c, 10, 0, accepted(7));
    assert_eq!(feed(&mut c, 20, 1, accepted(7)), 0);
    assert_eq!(feed(&mut c, 30, 2, accepted(8)), 1, "{:?}", c.violations);
    // ... and a commit must agree with what was accepted.
    assert_eq!(
        feed(
            &mut c,
            40,
            3,
            Event::Committed {
                version: v(2, 1),
                digest: 9
            }
        ),
        2,
        "{:?}",
        c.violations
    );
}

/// A deposed queen decides nothing: once the queen of a higher term has committed, a queen of
/// a lower term that still commits (say, on acks that waited in her receive buffer while she was
/// paused) is a violation. A worker that learns of an old commit late is not.
#[test]
fn a_deposed_queen_committing_is_a_violation() {
    let mut c = Checker::default();
    feed(&mut c, 10, 0, crowned(3, v(2, 0)));
    feed(
        &mut c,
        20,
        0,
        Event::Committed {
            version: v(3, 0),
            digest: 1,
        },
    );
    // The new queen holds 3.1 (so nothing committed is lost: only the new check can fire).
    feed(&mut c, 2000, 1, crowned(4, v(3, 1)));
    feed(
        &mut c,
        2010,
        1,
        Event::Committed {
            version: v(4, 0),
            digest: 2,
        },
    );
    // A worker marks (3, 0) committed late: fine (it was committed).
    assert_eq!(
        feed(
            &mut c,
            2020,
            2,
            Event::Committed {
                version: v(3, 0),
                digest: 1
            }
        ),
        0,
        "{:?}",
        c.violations
    );
    // The old queen decides a commit in term 3 after term 4's queen committed.
    assert_eq!(
        feed(
            &mut c,
            3000,
            0,
            Event::Committed {
                version: v(3, 1),
                digest: 3
            }
        ),
        1,
        "{:?}",
        c.violations
    );
    // Had she abdicated, her commits would no longer be hers to decide (she is a worker).
    let mut c = Checker::default();
    feed(&mut c, 10, 0, crowned(3, v(2, 0)));
    feed(
        &mut c,
        20,
        0,
        Event::Abdicated {
            term: 3,
            reason: AbdicateReason::LostMajority,
        },
    );
    feed(&mut c, 2000, 1, crowned(4, v(3, 0)));
    feed(
        &mut c,
        2010,
        1,
        Event::Committed {
            version: v(4, 0),
            digest: 2,
        },
    );
    assert_eq!(
        feed(
            &mut c,
            2020,
            0,
            Event::Committed {
                version: v(3, 0),
                digest: 1
            }
        ),
        0,
        "{:?}",
        c.violations
    );
}
