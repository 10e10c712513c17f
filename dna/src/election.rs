//! The election's rules as pure functions: how a voter judges a ballot and how long a
//! candidate waits before standing. The node feeds them its view; nothing here has state.

use swarm_core::wire::{Pheromone, Version};
use swarm_core::{NodeId, Time};

/// A request for a vote (or, with `pre`, a pre-vote that changes no one's term).
#[derive(Clone, Copy, Debug)]
pub struct Ballot {
    pub candidate: NodeId,
    pub term: u64,
    pub version: Version,
    pub pheromone: Pheromone,
    pub handover: bool,
    pub pre: bool,
}

/// What the voter knows when it judges a ballot.
#[derive(Clone, Copy, Debug)]
pub struct VoterView {
    pub now: Time,
    pub term: u64,
    pub voted_for: Option<NodeId>,
    /// Newest colony-state version the voter holds.
    pub version: Version,
    /// The queen the voter obeys: her term and when her lease runs out in the voter's view.
    pub lease: Option<(u64, Time)>,
    /// The voter is itself a reigning queen.
    pub reigning: bool,
    /// The voter restarted less than a worker lease ago: before the crash it may have acked a
    /// queen whose lease still runs, so it votes for nobody yet.
    pub restart_fenced: bool,
    /// The voter just gave its real vote to this candidate: until that candidate's first
    /// heartbeat can arrive, it refuses to pre-vote for anyone else (no duel at the finish).
    pub just_voted_for: Option<NodeId>,
    /// The voter lost its queen (or booted) recently enough to refuse clearly weaker candidates.
    pub veto_open: bool,
    /// The fittest up-to-date live member the voter knows of, other than the candidate.
    pub fittest_other: Option<Pheromone>,
    pub weak_margin: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Grant,
    Refuse(Refusal),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The ballot's term is behind the voter's.
    StaleTerm,
    /// The voter still obeys a live queen (this is what keeps a worker that merely missed
    /// heartbeats from disrupting the colony).
    LeaseValid,
    Reigning,
    /// The candidate's colony state is older than the voter's: crowning it could lose a commit.
    OlderVersion,
    AlreadyVoted,
    /// The voter just voted for another candidate, whose crown (and first heartbeat) is due.
    JustVoted,
    /// The candidate is clearly weaker than the fittest up-to-date member the voter knows.
    Weaker,
}

pub fn judge(ballot: &Ballot, view: &VoterView) -> Verdict {
    use Refusal::*;
    let refuse = Verdict::Refuse;
    if ballot.term < view.term
        || (ballot.pre
            && ballot.term <= view.term
            && view.voted_for.is_some_and(|v| v != ballot.candidate))
    {
        return refuse(StaleTerm);
    }
    if view.reigning {
        return refuse(Reigning);
    }
    if view.restart_fenced {
        return refuse(LeaseValid);
    }
    if ballot.pre && view.just_voted_for.is_some_and(|c| c != ballot.candidate) {
        return refuse(JustVoted);
    }
    if let Some((lease_term, until)) = view.lease {
        let released_by_handover = ballot.handover && lease_term + 1 == ballot.term;
        if view.now < until && !released_by_handover {
            return refuse(LeaseValid);
        }
    }
    if ballot.version < view.version {
        return refuse(OlderVersion);
    }
    if !ballot.pre
        && ballot.term == view.term
        && view.voted_for.is_some_and(|v| v != ballot.candidate)
    {
        return refuse(AlreadyVoted);
    }
    if view.veto_open && !ballot.handover {
        if let Some(fittest) = view.fittest_other {
            if fittest.as_f64() > ballot.pheromone.as_f64() * (1.0 + view.weak_margin) {
                return refuse(Weaker);
            }
        }
    }
    Verdict::Grant
}

/// How long a queenless node of pheromone `rank` (0 = fittest) waits before standing.
pub fn stand_delay_ms(rank: usize, base_ms: u64, stagger_ms: u64, jitter_ms: u64) -> u64 {
    base_ms + stagger_ms.saturating_mul(rank.min(1000) as u64) + jitter_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballot() -> Ballot {
        Ballot {
            candidate: NodeId(1),
            term: 5,
            version: Version { term: 4, seq: 2 },
            pheromone: Pheromone(500_000),
            handover: false,
            pre: false,
        }
    }

    fn view() -> VoterView {
        VoterView {
            now: Time(10_000),
            term: 4,
            voted_for: None,
            version: Version { term: 4, seq: 2 },
            lease: Some((4, Time(9_000))),
            reigning: false,
            restart_fenced: false,
            just_voted_for: None,
            veto_open: true,
            fittest_other: Some(Pheromone(520_000)),
            weak_margin: 0.1,
        }
    }

    #[test]
    fn grants_an_up_to_date_candidate_after_the_lease() {
        assert_eq!(judge(&ballot(), &view()), Verdict::Grant);
    }

    #[test]
    fn each_rule_refuses() {
        let v = view();
        assert_eq!(
            judge(
                &Ballot {
                    term: 3,
                    ..ballot()
                },
                &v
            ),
            Verdict::Refuse(Refusal::StaleTerm)
        );
        assert_eq!(
            judge(
                &ballot(),
                &VoterView {
                    lease: Some((4, Time(20_000))),
                    ..v
                }
            ),
            Verdict::Refuse(Refusal::LeaseValid)
        );
        assert_eq!(
            judge(
                &ballot(),
                &VoterView {
                    reigning: true,
                    ..v
                }
            ),
            Verdict::Refuse(Refusal::Reigning)
        );
        assert_eq!(
            judge(
                &ballot(),
                &VoterView {
                    version: Version { term: 4, seq: 3 },
                    ..v
                }
            ),
            Verdict::Refuse(Refusal::OlderVersion)
        );
        assert_eq!(
            judge(
                &ballot(),
                &VoterView {
                    term: 5,
                    voted_for: Some(NodeId(2)),
                    ..v
                }
            ),
            Verdict::Refuse(Refusal::AlreadyVoted)
        );
        assert_eq!(
            judge(
                &ballot(),
                &VoterView {
                    fittest_other: Some(Pheromone(900_000)),
                    ..v
                }
            ),
            Verdict::Refuse(Refusal::Weaker)
        );
        // The veto only holds for a while after the queen is lost.
        assert_eq!(
            judge(
                &ballot(),
                &VoterView {
                    fittest_other: Some(Pheromone(900_000)),
                    veto_open: false,
                    ..v
                }
            ),
            Verdict::Grant
        );
    }

    #[test]
    fn a_fresh_vote_blocks_pre_votes_for_others_only() {
        let v = VoterView {
            term: 5,
            voted_for: Some(NodeId(2)),
            just_voted_for: Some(NodeId(2)),
            ..view()
        };
        let pre = Ballot {
            pre: true,
            term: 6,
            ..ballot()
        };
        assert_eq!(judge(&pre, &v), Verdict::Refuse(Refusal::JustVoted));
        assert_eq!(
            judge(
                &Ballot {
                    candidate: NodeId(2),
                    ..pre
                },
                &v
            ),
            Verdict::Grant
        );
        assert_eq!(
            judge(
                &pre,
                &VoterView {
                    just_voted_for: None,
                    ..v
                }
            ),
            Verdict::Grant
        );
    }

    #[test]
    fn handover_overrides_the_outgoing_queens_lease_only() {
        let v = VoterView {
            lease: Some((4, Time(20_000))),
            ..view()
        };
        assert_eq!(
            judge(
                &Ballot {
                    handover: true,
                    ..ballot()
                },
                &v
            ),
            Verdict::Grant
        );
        assert_eq!(
            judge(
                &Ballot {
                    handover: true,
                    term: 6,
                    ..ballot()
                },
                &v
            ),
            Verdict::Refuse(Refusal::LeaseValid)
        );
    }

    #[test]
    fn a_vote_already_given_is_given_again_to_the_same_candidate() {
        let v = VoterView {
            term: 5,
            voted_for: Some(NodeId(1)),
            ..view()
        };
        assert_eq!(judge(&ballot(), &v), Verdict::Grant);
    }
}
