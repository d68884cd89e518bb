//! Majorities, including the two majorities of joint consensus (section 6).

use std::collections::BTreeSet;

use crate::types::{LogIndex, Membership, NodeId};

/// The highest index that a majority of `voters` has reached, given each voter's index.
fn majority_index(voters: &BTreeSet<NodeId>, index_of: &impl Fn(NodeId) -> LogIndex) -> LogIndex {
    if voters.is_empty() {
        // An empty half of a joint configuration agrees with anything.
        return LogIndex(u64::MAX);
    }
    let mut indexes: Vec<LogIndex> = voters.iter().map(|&id| index_of(id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[voters.len() / 2]
}

/// The highest index replicated on a majority of the configuration (on both majorities
/// during joint consensus).
pub(crate) fn committed_index(m: &Membership, index_of: impl Fn(NodeId) -> LogIndex) -> LogIndex {
    let incoming = majority_index(&m.voters, &index_of);
    match &m.outgoing {
        Some(out) => incoming.min(majority_index(out, &index_of)),
        None => incoming,
    }
}

/// Whether the voters for which `yes` holds form a quorum of the configuration.
pub(crate) fn has_quorum(m: &Membership, yes: impl Fn(NodeId) -> bool) -> bool {
    let half = |voters: &BTreeSet<NodeId>| {
        voters.is_empty() || voters.iter().filter(|&&id| yes(id)).count() > voters.len() / 2
    };
    half(&m.voters) && m.outgoing.as_ref().is_none_or(half)
}

/// Whether the voters for which `no` holds make a quorum impossible: a majority of one
/// half of the configuration can no longer be reached (an election is then lost, even if
/// the other half of a joint configuration agrees).
pub(crate) fn is_out_of_reach(m: &Membership, no: impl Fn(NodeId) -> bool) -> bool {
    let lost = |voters: &BTreeSet<NodeId>| {
        let against = voters.iter().filter(|&&id| no(id)).count();
        !voters.is_empty() && against > voters.len() - (voters.len() / 2 + 1)
    };
    lost(&m.voters) || m.outgoing.as_ref().is_some_and(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|&i| NodeId(i)).collect()
    }

    #[test]
    fn majority_of_three_is_the_median() {
        let m = Membership::new(ids(&[1, 2, 3]));
        let idx = |id: NodeId| LogIndex([0, 5, 3, 9][id.0 as usize]);
        assert_eq!(committed_index(&m, idx), LogIndex(5));
    }

    #[test]
    fn joint_consensus_needs_both_majorities() {
        let mut m = Membership::new(ids(&[1, 2, 3]));
        m.outgoing = Some(ids(&[4, 5, 6]));
        let idx = |id: NodeId| LogIndex(if id.0 <= 3 { 10 } else { 2 });
        assert_eq!(committed_index(&m, idx), LogIndex(2));
        assert!(!has_quorum(&m, |id| id.0 <= 3));
        assert!(has_quorum(&m, |id| id.0 != 3 && id.0 != 6));
    }

    #[test]
    fn a_quorum_is_out_of_reach_once_either_half_cannot_make_a_majority() {
        let mut m = Membership::new(ids(&[1, 2, 3, 4]));
        // Four voters: two against leave at most two in favour, short of three.
        assert!(!is_out_of_reach(&m, |id| id.0 == 1));
        assert!(is_out_of_reach(&m, |id| id.0 <= 2));
        m.outgoing = Some(ids(&[5, 6, 7]));
        assert!(!is_out_of_reach(&m, |id| id.0 == 5));
        assert!(is_out_of_reach(&m, |id| id.0 == 5 || id.0 == 6));
        m.voters.clear();
        assert!(!is_out_of_reach(&m, |id| id.0 == 1));
        // Five voters: two against still leave three; two voters: one against is enough.
        let five = Membership::new(ids(&[1, 2, 3, 4, 5]));
        assert!(!is_out_of_reach(&five, |id| id.0 <= 2));
        assert!(is_out_of_reach(&five, |id| id.0 <= 3));
        let two = Membership::new(ids(&[1, 2]));
        assert!(is_out_of_reach(&two, |id| id.0 == 2));
    }

    #[test]
    fn even_cluster_needs_more_than_half() {
        let m = Membership::new(ids(&[1, 2, 3, 4]));
        assert!(!has_quorum(&m, |id| id.0 <= 2));
        assert!(has_quorum(&m, |id| id.0 <= 3));
    }
}
