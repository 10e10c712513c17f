//! Wire codec: the cost every packet pays (encode + seal, open + decode).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use swarm_core::NodeId;
use swarm_core::seal::ColonyKey;
use swarm_core::wire::{self, ColonyMsg, Heir, MAX_DATAGRAM_BYTES, Pheromone, Version};

fn heartbeat() -> ColonyMsg {
    ColonyMsg::Heartbeat {
        term: 42,
        seq: 1234,
        lease_ms: 1000,
        latest: Version { term: 42, seq: 3 },
        commit: Version { term: 42, seq: 3 },
        heirs: (0..4)
            .map(|i| Heir {
                node: NodeId(i + 1),
                pheromone: Pheromone(500_000 + i as u32),
            })
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let key = ColonyKey::from_passphrase("bench");
    let msg = heartbeat();
    let bytes = wire::encode_colony(NodeId(7), &msg, &key).unwrap_or_default();
    c.bench_function("wire/heartbeat encode+seal", |b| {
        b.iter(|| wire::encode_colony(NodeId(7), black_box(&msg), &key))
    });
    c.bench_function("wire/heartbeat open+decode", |b| {
        b.iter(|| wire::decode(black_box(&bytes), &key, MAX_DATAGRAM_BYTES))
    });
    let mut tampered = bytes.clone();
    tampered[20] ^= 1;
    c.bench_function("wire/reject tampered packet", |b| {
        b.iter(|| wire::decode(black_box(&tampered), &key, MAX_DATAGRAM_BYTES))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
