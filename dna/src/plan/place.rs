//! The placement algorithm behind [`super::plan`].
//!
//! Feasible means: arch and labels match, the node's free capacity covers the needs, no
//! anti-affinity conflict, and none of the role's published host ports is already published
//! there (host ports are a per-node resource). Each placed replica is handed specific GPU
//! indices of its node (as many as its needs ask for: the lowest free ones, or its previous ones
//! when it is kept), so two replicas never share a GPU.
//!
//! 1. Keep: in priority order, every previous assignment whose node still exists and whose
//!    placement (in its recorded primary/fallback mode) is still feasible stays where it is,
//!    with the GPU indices it had.
//! 2. Place: role by role in priority order, the replicas not kept go to the best feasible node
//!    by the role's strategy. Per role the feasible nodes are scored once into a heap; after each
//!    placement only the chosen node is re-scored (versioned entries, stale ones are skipped).
//!    When nothing fits, with `needs` nor `fallback`, replicas of strictly lower priority roles
//!    are evicted from the node where that costs least (those holding a host port it needs, or
//!    an anti-affinity conflict, must go), and re-placed on their own turn.
//! 3. Retry: when evictions freed room after a role's turn, its unplaced replicas try again.
//! 4. Explain: each unplaced replica gets a reason judged against the final placement.
//!
//! [`Exclusions`] add two constraints the queen commits with the plan. A *held* node (down, but
//! waited for) keeps the previous replicas of the roles it is held for, and nothing else is
//! placed there (nor evicted from there). A *failed* replica is kept and placed on none of the
//! nodes it failed on, and while its backoff runs it is placed nowhere (`Failing`).

use super::model::{
    DIMS, MAX_REPLICAS_PER_ROLE, Node, PortKey, Res, Roles, add_res, explain_no_match, fits,
    fmt_port, fmt_res, matches, node_index, ports_overlap, resolve_nodes, resolve_roles, sub_res,
    util_after,
};
use super::{Exclusions, Plan};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use swarm_core::spec::{ColonySpec, Failure, NodeRecord, Strategy, Unplaced, UnplacedReason};
use swarm_core::wire::Assignment;

/// One replica placed on a node.
#[derive(Clone)]
struct Slot {
    role: u32,
    replica: u32,
    fallback: bool,
    /// GPU indices handed to it, ascending.
    gpus: Vec<u16>,
}

#[derive(Default)]
struct NodeState {
    used: Res,
    slots: Vec<Slot>,
    /// Published host ports and the role holding each, sorted by port.
    ports: Vec<(PortKey, u32)>,
    /// GPU indices in use, ascending (as many as `used[3]`).
    gpus: Vec<u16>,
    /// Replicas per role on this node, sorted by role.
    counts: Vec<(u32, u32)>,
    /// Bumped on every change; heap entries carry the version they were scored at.
    version: u32,
}

/// A replica still to place. Global replicas are bound to their node.
#[derive(Clone, Copy)]
struct Pending {
    replica: u32,
    node: Option<usize>,
}

/// A previous assignment as `keep` reads it: replica, node index, fallback, GPU indices.
type Prev<'p> = (u32, usize, bool, &'p [u16]);

/// A heap entry: score (smaller is better), node index (ties by id), node version.
type Entry = Reverse<((u64, u64, u64), u32, u32)>;

/// The heaps of one role's turn, by kind: place with needs, place with fallback, preempt with
/// needs, preempt with fallback. Built on first use.
type Heaps = [Option<BinaryHeap<Entry>>; 4];

/// A failed replica as the planner reads it.
struct Fail<'a> {
    /// Indices of the nodes it failed on that are in this plan, sorted.
    avoid: Vec<usize>,
    record: &'a Failure,
}

struct Planner<'a> {
    nodes: Vec<Node<'a>>,
    /// Per node: the roles (sorted) whose replicas it keeps while held (down, waited for);
    /// `None` for a node that is up.
    held: Vec<Option<Vec<u32>>>,
    /// Failed replicas of replicated roles, by (role, replica).
    failing: BTreeMap<(u32, u32), Fail<'a>>,
    /// Failed replicas waiting out their backoff: unplaced, per role.
    waiting: Vec<Vec<u32>>,
    roles: Roles<'a>,
    ns: Vec<NodeState>,
    /// Replicas currently placed, per role.
    placed: Vec<u64>,
    /// Replica indices kept from the previous plan, per role (ascending).
    kept: Vec<Vec<u32>>,
    /// Global replicas to place (not kept), per role.
    global_pending: Vec<Vec<Pending>>,
    /// Replicas evicted by higher priorities, per role.
    evicted: Vec<Vec<Pending>>,
    /// Replicas that found no place, per role.
    unplaced: Vec<Vec<Pending>>,
    evictions: u64,
}

pub(crate) fn run<'a>(
    spec: &'a ColonySpec,
    nodes: &'a [NodeRecord],
    previous: &[Assignment],
    ex: Exclusions<'a>,
) -> Plan {
    let nodes = resolve_nodes(nodes);
    let roles = resolve_roles(spec);
    let n_roles = roles.list.len();
    let mut held: Vec<Option<Vec<u32>>> = vec![None; nodes.len()];
    for h in ex.held {
        if let Some(n) = node_index(&nodes, h.node) {
            let mut kept: Vec<u32> = h
                .roles
                .iter()
                .filter_map(|name| roles.by_name.get(name.as_str()).copied())
                .collect();
            kept.sort_unstable();
            kept.dedup();
            held[n] = Some(kept);
        }
    }
    let mut failing = BTreeMap::new();
    let mut waiting = vec![Vec::new(); n_roles];
    for f in ex.failures {
        let Some(&r) = roles.by_name.get(f.role.as_str()) else {
            continue;
        };
        let role = &roles.list[r as usize];
        // A global replica is bound to its node: it cannot move, so it has no failure to avoid.
        if role.global || f.replica >= role.count {
            continue;
        }
        if f.waiting() {
            waiting[r as usize].push(f.replica);
        }
        let mut avoid: Vec<usize> = f
            .nodes
            .iter()
            .filter_map(|&id| node_index(&nodes, id))
            .collect();
        avoid.sort_unstable();
        avoid.dedup();
        failing.insert((r, f.replica), Fail { avoid, record: f });
    }
    for w in &mut waiting {
        w.sort_unstable();
        w.dedup();
    }
    let mut p = Planner {
        ns: (0..nodes.len()).map(|_| NodeState::default()).collect(),
        nodes,
        held,
        failing,
        waiting,
        roles,
        placed: vec![0; n_roles],
        kept: vec![Vec::new(); n_roles],
        global_pending: vec![Vec::new(); n_roles],
        evicted: vec![Vec::new(); n_roles],
        unplaced: vec![Vec::new(); n_roles],
        evictions: 0,
    };
    p.keep(previous);
    let order = p.roles.order.clone();
    for &r in &order {
        let pending = p.pending(r);
        p.place_role(r, pending, true);
    }
    if p.evictions > 0 {
        for &r in &order {
            let pending = std::mem::take(&mut p.unplaced[r as usize]);
            if !pending.is_empty() {
                p.place_role(r, pending, false);
            }
        }
    }
    p.finish()
}

impl<'a> Planner<'a> {
    fn prio(&self, r: u32) -> i32 {
        self.roles.list[r as usize].priority()
    }

    fn slot_need(&self, s: &Slot) -> Res {
        let role = &self.roles.list[s.role as usize];
        match role.fallback {
            Some(f) if s.fallback => f,
            _ => role.needs,
        }
    }

    fn count(&self, n: usize, r: u32) -> u32 {
        let c = &self.ns[n].counts;
        match c.binary_search_by_key(&r, |e| e.0) {
            Ok(i) => c[i].1,
            Err(_) => 0,
        }
    }

    fn conflicts(&self, n: usize, r: u32) -> bool {
        let role = &self.roles.list[r as usize];
        let counts = &self.ns[n].counts;
        if counts.len() < role.conflicts.len() {
            counts
                .iter()
                .any(|&(c, k)| k > 0 && role.conflicts.binary_search(&c).is_ok())
        } else {
            role.conflicts.iter().any(|&c| self.count(n, c) > 0)
        }
    }

    /// The first host port of `r` already published on `n`, with the role holding it.
    fn port_clash(&self, n: usize, r: u32) -> Option<(PortKey, u32)> {
        let held = &self.ns[n].ports;
        if held.is_empty() {
            return None;
        }
        self.roles.list[r as usize]
            .ports
            .iter()
            .find_map(|&k| held.binary_search_by_key(&k, |e| e.0).ok().map(|i| held[i]))
    }

    /// Can a new replica of `r` go on `n`? Never on a held node.
    fn feasible(&self, n: usize, r: u32, fallback: bool) -> bool {
        self.held[n].is_none() && self.fits_here(n, r, fallback)
    }

    /// May a previous replica of `r` stay on `n`? On a held node only if `r` is held there.
    fn keepable(&self, n: usize, r: u32, fallback: bool) -> bool {
        self.held[n]
            .as_ref()
            .is_none_or(|kept| kept.binary_search(&r).is_ok())
            && self.fits_here(n, r, fallback)
    }

    /// Needs, room, anti-affinity and host ports, whatever the node's state.
    fn fits_here(&self, n: usize, r: u32, fallback: bool) -> bool {
        let Some((needs, res)) = self.roles.list[r as usize].mode(fallback) else {
            return false;
        };
        let node = &self.nodes[n];
        fits(&node.cap, &self.ns[n].used, &res)
            && !self.conflicts(n, r)
            && self.port_clash(n, r).is_none()
            && matches(needs, &res, node)
    }

    /// The nodes replica `replica` of `r` failed on (indices, sorted), if it failed.
    fn avoided(&self, r: u32, replica: u32) -> &[usize] {
        self.failing
            .get(&(r, replica))
            .map_or(&[], |f| f.avoid.as_slice())
    }

    /// Is replica `replica` of `r` waiting out a failure backoff (placed nowhere)?
    fn is_waiting(&self, r: u32, replica: u32) -> bool {
        self.waiting[r as usize].binary_search(&replica).is_ok()
    }

    /// The GPU indices for a replica needing `count` on `n`: those of `want` (its previous
    /// ones) that are on the node and free, then the lowest free ones. The caller has checked
    /// that `count` GPUs are free.
    fn pick_gpus(&self, n: usize, count: u64, want: &[u16]) -> Vec<u16> {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count == 0 {
            return Vec::new();
        }
        let cap = self.nodes[n].cap[3];
        let taken = &self.ns[n].gpus;
        let free = |g: u16| u64::from(g) < cap && taken.binary_search(&g).is_err();
        let mut out: Vec<u16> = Vec::with_capacity(count.min(want.len().max(1)));
        for &g in want {
            if out.len() < count && free(g) && !out.contains(&g) {
                out.push(g);
            }
        }
        let mut g: u16 = 0;
        while out.len() < count && u64::from(g) < cap {
            if free(g) && !out.contains(&g) {
                out.push(g);
            }
            match g.checked_add(1) {
                Some(next) => g = next,
                None => break,
            }
        }
        out.sort_unstable();
        out
    }

    fn add(&mut self, n: usize, r: u32, replica: u32, fallback: bool, want_gpus: &[u16]) {
        let gpus = self.pick_gpus(n, self.roles.list[r as usize].gpus(fallback), want_gpus);
        let slot = Slot {
            role: r,
            replica,
            fallback,
            gpus,
        };
        let need = self.slot_need(&slot);
        debug_assert_eq!(
            slot.gpus.len() as u64,
            need[3],
            "every reserved GPU has an index"
        );
        let role_ports = &self.roles.list[r as usize].ports;
        let st = &mut self.ns[n];
        add_res(&mut st.used, &need);
        for &g in &slot.gpus {
            if let Err(i) = st.gpus.binary_search(&g) {
                st.gpus.insert(i, g);
            }
        }
        for &k in role_ports {
            if let Err(i) = st.ports.binary_search_by_key(&k, |e| e.0) {
                st.ports.insert(i, (k, r));
            }
        }
        st.slots.push(slot);
        match st.counts.binary_search_by_key(&r, |e| e.0) {
            Ok(i) => st.counts[i].1 += 1,
            Err(i) => st.counts.insert(i, (r, 1)),
        }
        st.version = st.version.wrapping_add(1);
        self.placed[r as usize] += 1;
    }

    fn remove(&mut self, n: usize, si: usize) -> Option<Slot> {
        if si >= self.ns[n].slots.len() {
            return None;
        }
        let slot = self.ns[n].slots.swap_remove(si);
        let need = self.slot_need(&slot);
        let role_ports = &self.roles.list[slot.role as usize].ports;
        let st = &mut self.ns[n];
        sub_res(&mut st.used, &need);
        st.gpus.retain(|g| !slot.gpus.contains(g));
        st.ports
            .retain(|&(k, holder)| holder != slot.role || role_ports.binary_search(&k).is_err());
        if let Ok(i) = st.counts.binary_search_by_key(&slot.role, |e| e.0) {
            st.counts[i].1 -= 1;
            if st.counts[i].1 == 0 {
                st.counts.remove(i);
            }
        }
        st.version = st.version.wrapping_add(1);
        self.placed[slot.role as usize] -= 1;
        Some(slot)
    }

    /// Phase 1: keep previous assignments that are still feasible, in priority order.
    fn keep(&mut self, previous: &[Assignment]) {
        let n_roles = self.roles.list.len();
        // (replica, node, fallback, GPUs) per role, sorted, one entry per replica.
        let mut prev: Vec<Vec<Prev<'_>>> = vec![Vec::new(); n_roles];
        for a in previous {
            let Some(&r) = self.roles.by_name.get(a.role.as_str()) else {
                continue;
            };
            let Some(n) = node_index(&self.nodes, a.node) else {
                continue;
            };
            prev[r as usize].push((a.replica, n, a.fallback, &a.gpus));
        }
        for v in &mut prev {
            v.sort_unstable();
            v.dedup_by_key(|e| e.0);
        }
        let order = self.roles.order.clone();
        for &r in &order {
            let ri = r as usize;
            let entries = std::mem::take(&mut prev[ri]);
            if self.roles.list[ri].global {
                self.keep_global(r, &entries);
                continue;
            }
            let count = self.roles.list[ri].count;
            for &(replica, n, fb, gpus) in &entries {
                if replica >= count {
                    break; // scaled down: the highest indices go
                }
                if self.is_waiting(r, replica) || self.avoided(r, replica).contains(&n) {
                    continue; // it failed there: it must move (or wait)
                }
                if self.keepable(n, r, fb) {
                    self.add(n, r, replica, fb, gpus);
                    self.kept[ri].push(replica);
                }
            }
        }
    }

    /// Global roles: one replica per matching node. A node keeps its previous index; new
    /// nodes take the smallest unused ones, in node order.
    fn keep_global(&mut self, r: u32, entries: &[Prev<'_>]) {
        let role = &self.roles.list[r as usize];
        // Previous index per node (smallest index wins if a node had several).
        let mut by_node: Vec<Option<(u32, bool, &[u16])>> = vec![None; self.nodes.len()];
        for &(replica, n, fb, gpus) in entries {
            if by_node[n].is_none() {
                by_node[n] = Some((replica, fb, gpus));
            }
        }
        // A held node is a target only for a replica it keeps.
        let targets: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| {
                [false, true].iter().any(|&fb| {
                    role.mode(fb)
                        .is_some_and(|(needs, res)| matches(needs, &res, &self.nodes[n]))
                })
            })
            .filter(|&n| match &self.held[n] {
                None => true,
                Some(kept) => by_node[n].is_some() && kept.binary_search(&r).is_ok(),
            })
            .collect();
        let mut used: Vec<u32> = targets
            .iter()
            .filter_map(|&n| by_node[n].map(|e| e.0))
            .collect();
        used.sort_unstable();
        let mut next = 0u32;
        let mut ui = 0usize;
        let mut pending = Vec::new();
        for &n in &targets {
            match by_node[n] {
                Some((replica, fb, gpus)) => {
                    if self.keepable(n, r, fb) {
                        self.add(n, r, replica, fb, gpus);
                        self.kept[r as usize].push(replica);
                    } else {
                        pending.push(Pending {
                            replica,
                            node: Some(n),
                        });
                    }
                }
                None => {
                    while ui < used.len() && used[ui] <= next {
                        if used[ui] == next {
                            next = next.saturating_add(1);
                        }
                        ui += 1;
                    }
                    pending.push(Pending {
                        replica: next,
                        node: Some(n),
                    });
                    next = next.saturating_add(1);
                }
            }
        }
        self.global_pending[r as usize] = pending;
    }

    /// The replicas of `r` to place on its turn: not kept, or evicted since.
    fn pending(&mut self, r: u32) -> Vec<Pending> {
        let ri = r as usize;
        let evicted = std::mem::take(&mut self.evicted[ri]);
        if self.roles.list[ri].global {
            let mut v = std::mem::take(&mut self.global_pending[ri]);
            v.extend(evicted);
            v.sort_unstable_by_key(|p| p.node);
            return v;
        }
        let count = self.roles.list[ri].count as usize;
        let mut placed = vec![false; count];
        for &k in &self.kept[ri] {
            if let Some(p) = placed.get_mut(k as usize) {
                *p = true;
            }
        }
        for e in &evicted {
            if let Some(p) = placed.get_mut(e.replica as usize) {
                *p = false;
            }
        }
        for &w in &self.waiting[ri] {
            if let Some(p) = placed.get_mut(w as usize) {
                *p = true; // waits out its backoff: reported unplaced by `finish`
            }
        }
        placed
            .iter()
            .enumerate()
            .filter(|(_, p)| !**p)
            .map(|(i, _)| Pending {
                replica: u32::try_from(i).unwrap_or(u32::MAX),
                node: None,
            })
            .collect()
    }

    fn score(&self, n: usize, r: u32, res: &Res) -> (u64, u64, u64) {
        let role = &self.roles.list[r as usize];
        let util = util_after(&self.nodes[n].cap, &self.ns[n].used, res);
        let aff = if role.affinity.iter().any(|&a| self.count(n, a) > 0) {
            0
        } else {
            1
        };
        match role.spec.strategy {
            Strategy::Spread => (u64::from(self.count(n, r)), util, aff),
            Strategy::Pack => (u64::MAX - util.min(u64::MAX - 1), aff, 0),
        }
    }

    /// The heap entry of node `n` for role `r`, or `None` if the node is out of the running.
    /// `kind`: 0/1 place with needs/fallback (score by strategy), 2/3 preempt with
    /// needs/fallback (score by eviction cost).
    fn entry(&self, n: usize, r: u32, kind: usize) -> Option<Entry> {
        let fallback = kind % 2 == 1;
        let idx = u32::try_from(n).ok()?;
        let key = if kind < 2 {
            if !self.feasible(n, r, fallback) {
                return None;
            }
            let (_, res) = self.roles.list[r as usize].mode(fallback)?;
            self.score(n, r, &res)
        } else {
            let (top, count) = self.eviction_cost(n, r, fallback)?;
            // Among equal costs, the role's strategy: spread over nodes, or pack together.
            let mine = u64::from(self.count(n, r));
            let tie = match self.roles.list[r as usize].spec.strategy {
                Strategy::Spread => mine,
                Strategy::Pack => u64::MAX - mine,
            };
            (top, count, tie)
        };
        Some(Reverse((key, idx, self.ns[n].version)))
    }

    fn build_heap(&self, r: u32, kind: usize) -> BinaryHeap<Entry> {
        let v: Vec<Entry> = (0..self.nodes.len())
            .filter_map(|n| self.entry(n, r, kind))
            .collect();
        BinaryHeap::from(v)
    }

    fn pop_best(&self, heap: &mut BinaryHeap<Entry>) -> Option<usize> {
        while let Some(Reverse((_, n, version))) = heap.pop() {
            let n = n as usize;
            if self.ns[n].version == version {
                return Some(n);
            }
        }
        None
    }

    /// [`Self::pop_best`] skipping the nodes in `avoid` (sorted), which stay in the heap.
    fn pop_best_avoiding(&self, heap: &mut BinaryHeap<Entry>, avoid: &[usize]) -> Option<usize> {
        if avoid.is_empty() {
            return self.pop_best(heap);
        }
        let mut aside = Vec::new();
        let found = loop {
            let Some(e) = heap.pop() else { break None };
            let Reverse((_, n, version)) = e;
            let n = n as usize;
            if self.ns[n].version != version {
                continue;
            }
            if avoid.binary_search(&n).is_ok() {
                aside.push(e);
                continue;
            }
            break Some(n);
        };
        heap.extend(aside);
        found
    }

    /// Re-score node `n` into the heaps built so far, after it changed. Its older entries
    /// carry an older version and are skipped when popped.
    fn refresh(&self, heaps: &mut Heaps, r: u32, n: usize) {
        for (kind, heap) in heaps.iter_mut().enumerate() {
            if let Some(h) = heap {
                if let Some(e) = self.entry(n, r, kind) {
                    h.push(e);
                }
            }
        }
    }

    /// Phase 2 (and 3, without preemption): place `pending` replicas of role `r`.
    fn place_role(&mut self, r: u32, pending: Vec<Pending>, preempt: bool) {
        let ri = r as usize;
        let has_fallback = self.roles.list[ri].fallback.is_some();
        let mut heaps: Heaps = Default::default();
        let mut stuck = false;
        for p in pending {
            if stuck {
                self.unplaced[ri].push(p);
                continue;
            }
            let mut done = false;
            let avoid = self.avoided(r, p.replica).to_vec();
            for fb in [false, true] {
                if fb && !has_fallback {
                    break;
                }
                let chosen = match p.node {
                    Some(n) => self.feasible(n, r, fb).then_some(n),
                    None => {
                        let i = usize::from(fb);
                        if heaps[i].is_none() {
                            heaps[i] = Some(self.build_heap(r, i));
                        }
                        heaps[i]
                            .as_mut()
                            .and_then(|h| self.pop_best_avoiding(h, &avoid))
                    }
                };
                if let Some(n) = chosen {
                    self.add(n, r, p.replica, fb, &[]);
                    self.refresh(&mut heaps, r, n);
                    done = true;
                    break;
                }
            }
            if done {
                continue;
            }
            if preempt {
                if let Some((n, fb, victims)) = self.find_preemption(&mut heaps, r, p.node, &avoid)
                {
                    self.evict(n, victims);
                    self.add(n, r, p.replica, fb, &[]);
                    self.refresh(&mut heaps, r, n);
                    continue;
                }
            }
            // Nothing changes until this role is done, so the rest cannot fit either (unless
            // this one was kept off nodes the others may use).
            if p.node.is_none() && avoid.is_empty() {
                stuck = true;
            }
            self.unplaced[ri].push(p);
        }
    }

    /// The cost of making room for one replica of `r` on `n` by eviction: (rank of the highest
    /// victim priority, number of victims), or `None` if the node cannot be freed.
    fn eviction_cost(&self, n: usize, r: u32, fallback: bool) -> Option<(u64, u64)> {
        if self.held[n].is_some() {
            return None; // nothing new goes on a held node, so nothing is evicted for it
        }
        let (needs, res) = self.roles.list[r as usize].mode(fallback)?;
        if !matches(needs, &res, &self.nodes[n]) {
            return None;
        }
        let victims = self.victims_on(n, r, &res, self.prio(r))?;
        let top = victims
            .iter()
            .map(|&si| self.prio(self.ns[n].slots[si].role))
            .max()
            .unwrap_or(i32::MIN);
        let rank = u64::try_from(i64::from(top) - i64::from(i32::MIN)).unwrap_or(0);
        Some((rank, u64::try_from(victims.len()).unwrap_or(u64::MAX)))
    }

    /// The cheapest node on which evicting replicas of strictly lower priority makes room for
    /// one replica of `r` (bound to `only` if global): lowest highest-victim priority first,
    /// then fewest victims, then fewest (spread) or most (pack) replicas of `r`, then node id. Needs before fallback. Returns the victims' slots.
    fn find_preemption(
        &self,
        heaps: &mut Heaps,
        r: u32,
        only: Option<usize>,
        avoid: &[usize],
    ) -> Option<(usize, bool, Vec<usize>)> {
        let p = self.prio(r);
        let any_lower = (0..self.roles.list.len())
            .any(|x| self.placed[x] > 0 && self.roles.list[x].priority() < p);
        if !any_lower {
            return None;
        }
        for fb in [false, true] {
            let Some((_, res)) = self.roles.list[r as usize].mode(fb) else {
                continue;
            };
            let chosen = match only {
                Some(n) => self.eviction_cost(n, r, fb).map(|_| n),
                None => {
                    let i = 2 + usize::from(fb);
                    if heaps[i].is_none() {
                        heaps[i] = Some(self.build_heap(r, i));
                    }
                    heaps[i]
                        .as_mut()
                        .and_then(|h| self.pop_best_avoiding(h, avoid))
                }
            };
            if let Some(n) = chosen {
                let victims = self.victims_on(n, r, &res, p)?;
                return Some((n, fb, victims));
            }
        }
        None
    }

    /// Slots to evict from `n` so that `need` of role `r` (priority `p`) fits, or `None`.
    fn victims_on(&self, n: usize, r: u32, need: &Res, p: i32) -> Option<Vec<usize>> {
        let st = &self.ns[n];
        let cap = &self.nodes[n].cap;
        let conflicts = &self.roles.list[r as usize].conflicts;
        let ports = &self.roles.list[r as usize].ports;
        let mut victims = Vec::new();
        let mut used = st.used;
        for (si, s) in st.slots.iter().enumerate() {
            if self.must_leave(conflicts, ports, s.role) {
                if self.prio(s.role) >= p {
                    return None;
                }
                victims.push(si);
                sub_res(&mut used, &self.slot_need(s));
            }
        }
        if fits(cap, &used, need) {
            return Some(victims);
        }
        let mandatory = victims.len();
        let mut cands: Vec<usize> = (0..st.slots.len())
            .filter(|&si| {
                let s = &st.slots[si];
                self.prio(s.role) < p && !self.must_leave(conflicts, ports, s.role)
            })
            .collect();
        // Lowest priority first; among equals the later-placed role and higher replica.
        cands.sort_unstable_by_key(|&si| {
            let s = &st.slots[si];
            (self.prio(s.role), Reverse(s.role), Reverse(s.replica))
        });
        for si in cands {
            victims.push(si);
            sub_res(&mut used, &self.slot_need(&st.slots[si]));
            if fits(cap, &used, need) {
                break;
            }
        }
        if !fits(cap, &used, need) {
            return None;
        }
        // Spare any optional victim that is not needed after all (latest chosen first).
        let mut i = victims.len();
        while i > mandatory {
            i -= 1;
            let mut back = used;
            add_res(&mut back, &self.slot_need(&st.slots[victims[i]]));
            if fits(cap, &back, need) {
                used = back;
                victims.remove(i);
            }
        }
        Some(victims)
    }

    /// Must a replica of `other` leave a node for one of a role with these conflicts and host
    /// ports to go there (anti-affinity, or a host port both publish)?
    fn must_leave(&self, conflicts: &[u32], ports: &[PortKey], other: u32) -> bool {
        conflicts.binary_search(&other).is_ok()
            || (!ports.is_empty() && ports_overlap(ports, &self.roles.list[other as usize].ports))
    }

    fn evict(&mut self, n: usize, mut victims: Vec<usize>) {
        victims.sort_unstable_by(|a, b| b.cmp(a));
        for si in victims {
            if let Some(slot) = self.remove(n, si) {
                let global = self.roles.list[slot.role as usize].global;
                self.evicted[slot.role as usize].push(Pending {
                    replica: slot.replica,
                    node: global.then_some(n),
                });
                self.evictions += 1;
            }
        }
    }

    /// Why a replica of `r` (bound to `only` if global) has no place in the final plan.
    /// `avoid`: nodes this replica failed on (sorted), which do not count.
    fn reason(&self, r: u32, only: Option<usize>, avoid: &[usize]) -> UnplacedReason {
        let role = &self.roles.list[r as usize];
        let p = role.priority();
        let range = match only {
            Some(n) => n..n.saturating_add(1).min(self.nodes.len()),
            None => 0..self.nodes.len(),
        };
        let (mut matching, mut room, mut without_higher) = (0usize, 0usize, 0usize);
        // Nodes with room where a host port of the role is taken, the ports and their holders.
        let mut port_blocked = 0usize;
        let mut clashes: Vec<PortKey> = Vec::new();
        let mut holders: Vec<&str> = Vec::new();
        let mut failed_here = 0usize;
        for n in range {
            if self.held[n].is_some() {
                continue; // down: nothing new goes there
            }
            if avoid.binary_search(&n).is_ok() {
                failed_here += 1;
                continue;
            }
            let node = &self.nodes[n];
            let (mut m, mut has_room, mut fits_alone) = (false, false, false);
            for fb in [false, true] {
                let Some((needs, res)) = role.mode(fb) else {
                    continue;
                };
                if !matches(needs, &res, node) {
                    continue;
                }
                m = true;
                if fits(&node.cap, &self.ns[n].used, &res) {
                    has_room = true;
                } else if self.fits_among_equals(n, r, &res, p) {
                    fits_alone = true;
                }
            }
            matching += usize::from(m);
            room += usize::from(has_room);
            without_higher += usize::from(fits_alone && !has_room);
            if has_room {
                if let Some((k, holder)) = self.port_clash(n, r) {
                    port_blocked += 1;
                    clashes.push(k);
                    holders.push(self.roles.list[holder as usize].name());
                }
            }
        }
        if matching == 0 && failed_here > 0 {
            return UnplacedReason::NoMatchingNode {
                detail: "it failed on every node that is up".to_owned(),
            };
        }
        if matching == 0 {
            let mut detail = explain_no_match(&role.spec.needs, &self.nodes);
            if let Some(f) = &role.spec.fallback {
                detail.push_str("; fallback: ");
                detail.push_str(&explain_no_match(f, &self.nodes));
            }
            return UnplacedReason::NoMatchingNode { detail };
        }
        let nodes_word = |k: usize| if k == 1 { "node" } else { "nodes" };
        if room > 0 && port_blocked == room {
            clashes.sort_unstable();
            clashes.dedup();
            holders.sort_unstable();
            holders.dedup();
            let ports: Vec<String> = clashes.into_iter().map(fmt_port).collect();
            return UnplacedReason::PortConflict {
                detail: format!(
                    "host port {} already published on {room} {} with room (by {})",
                    ports.join(", "),
                    nodes_word(room),
                    holders.join(", ")
                ),
            };
        }
        if room > 0 {
            let room = room - port_blocked;
            let names: Vec<&str> = role
                .conflicts
                .iter()
                .map(|&c| self.roles.list[c as usize].name())
                .collect();
            return UnplacedReason::AntiAffinity {
                detail: format!(
                    "{room} {} with room already run a role it must not share with ({})",
                    nodes_word(room),
                    names.join(", ")
                ),
            };
        }
        if without_higher > 0 {
            return UnplacedReason::Preempted {
                detail: format!(
                    "higher-priority roles hold the room it needs on {without_higher} of \
                     {matching} matching {}",
                    nodes_word(matching)
                ),
            };
        }
        UnplacedReason::Capacity {
            detail: format!(
                "{matching} matching {} full (needs {})",
                if matching == 1 {
                    "node is"
                } else {
                    "nodes are"
                },
                fmt_res(&role.needs)
            ),
        }
    }

    /// Would `need` of `r` fit on `n` if only replicas of priority `p` were there?
    fn fits_among_equals(&self, n: usize, r: u32, need: &Res, p: i32) -> bool {
        let conflicts = &self.roles.list[r as usize].conflicts;
        let ports = &self.roles.list[r as usize].ports;
        let mut used = [0u64; DIMS];
        for s in &self.ns[n].slots {
            if self.prio(s.role) != p {
                continue;
            }
            if self.must_leave(conflicts, ports, s.role) {
                return false;
            }
            add_res(&mut used, &self.slot_need(s));
        }
        fits(&self.nodes[n].cap, &used, need)
    }

    /// Phase 4: the plan, sorted by (role name, replica), with reasons for the unplaced.
    fn finish(self) -> Plan {
        let roles = &self.roles;
        let mut placed: Vec<(u32, u32, usize, usize)> = Vec::new();
        let mut global_idx: Vec<Vec<u32>> = vec![Vec::new(); roles.list.len()];
        for (n, st) in self.ns.iter().enumerate() {
            for (si, s) in st.slots.iter().enumerate() {
                let role = &roles.list[s.role as usize];
                placed.push((role.rank, s.replica, n, si));
                if role.global {
                    global_idx[s.role as usize].push(s.replica);
                }
            }
        }
        placed.sort_unstable();
        let name_of = |rank: u32| -> String {
            roles
                .by_rank
                .get(rank as usize)
                .map(|&r| roles.list[r as usize].name().to_owned())
                .unwrap_or_default()
        };
        let assignments = placed
            .iter()
            .map(|&(rank, replica, n, si)| {
                let slot = &self.ns[n].slots[si];
                Assignment {
                    role: name_of(rank),
                    replica,
                    node: self.nodes[n].id,
                    fallback: slot.fallback,
                    gpus: slot.gpus.clone(),
                }
            })
            .collect();

        let mut unplaced: Vec<(u32, u32, UnplacedReason)> = Vec::new();
        for (ri, list) in self.unplaced.iter().enumerate() {
            let r = u32::try_from(ri).unwrap_or(u32::MAX);
            let role = &roles.list[ri];
            if role.global {
                // Unplaced global replicas take the smallest indices no placed replica uses,
                // in node order, so re-planning from this plan reproduces them.
                let mut used = std::mem::take(&mut global_idx[ri]);
                used.sort_unstable();
                let mut nodes: Vec<usize> = list.iter().filter_map(|p| p.node).collect();
                nodes.sort_unstable();
                nodes.dedup();
                let (mut next, mut ui) = (0u32, 0usize);
                for n in nodes {
                    while ui < used.len() && used[ui] <= next {
                        if used[ui] == next {
                            next = next.saturating_add(1);
                        }
                        ui += 1;
                    }
                    unplaced.push((role.rank, next, self.reason(r, Some(n), &[])));
                    next = next.saturating_add(1);
                }
            } else if !list.is_empty() {
                let reason = self.reason(r, None, &[]);
                for p in list {
                    let reason = match self.failing.get(&(r, p.replica)) {
                        Some(f) => failing_reason(f.record, Some(&self.reason(r, None, &f.avoid))),
                        None => reason.clone(),
                    };
                    unplaced.push((role.rank, p.replica, reason));
                }
            }
            for &w in &self.waiting[ri] {
                if let Some(f) = self.failing.get(&(r, w)) {
                    unplaced.push((role.rank, w, failing_reason(f.record, None)));
                }
            }
            if let swarm_core::spec::Count::Replicas(asked) = role.spec.count {
                if asked > MAX_REPLICAS_PER_ROLE {
                    unplaced.push((
                        role.rank,
                        MAX_REPLICAS_PER_ROLE,
                        UnplacedReason::Capacity {
                            detail: format!(
                                "asks for {asked} replicas; the planner places at most \
                                 {MAX_REPLICAS_PER_ROLE} per role"
                            ),
                        },
                    ));
                }
            }
        }
        unplaced.sort_by_key(|u| (u.0, u.1));
        let unplaced = unplaced
            .into_iter()
            .map(|(rank, replica, reason)| Unplaced {
                role: name_of(rank),
                replica,
                reason,
            })
            .collect();
        Plan {
            assignments,
            unplaced,
        }
    }
}

/// Why a failed replica is unplaced: it waits out its backoff (`otherwise` is `None`), or no
/// node it has not failed on fits (`otherwise` says why not).
fn failing_reason(f: &Failure, otherwise: Option<&UnplacedReason>) -> UnplacedReason {
    let nodes: Vec<String> = f.nodes.iter().map(|n| n.to_string()).collect();
    let times = if f.count == 1 {
        "once".to_owned()
    } else {
        format!("{} times in a row", f.count)
    };
    let mut detail = format!(
        "failed {times}, on {} {}",
        if nodes.len() == 1 { "node" } else { "nodes" },
        nodes.join(", ")
    );
    if !f.detail.is_empty() {
        detail.push_str(&format!(" (last: {})", f.detail));
    }
    match otherwise {
        None => detail.push_str("; waiting out its backoff before the next move"),
        Some(why) => detail.push_str(&format!("; no other node fits ({why})")),
    }
    UnplacedReason::Failing { detail }
}
