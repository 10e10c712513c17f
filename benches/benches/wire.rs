//! Wire codec: the cost every frame pays (encode, decode), and the gossip envelope the agent's
//! transport seals datagrams with (XChaCha20-Poly1305 seal / open of a 300-byte and a 1,300-byte
//! frame).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use swarm_core::NodeId;
use swarm_core::envelope::{self, Key, Keyring, ReplayGuard};
use swarm_core::wire::{self, ColonyMsg, Heir, MAX_DATAGRAM_FRAME_BYTES, Pheromone, Version};

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
    let msg = heartbeat();
    let bytes = wire::encode_colony(NodeId(7), &msg).unwrap_or_default();
    c.bench_function("wire/heartbeat encode", |b| {
        b.iter(|| wire::encode_colony(NodeId(7), black_box(&msg)))
    });
    c.bench_function("wire/heartbeat decode", |b| {
        b.iter(|| wire::decode(black_box(&bytes), MAX_DATAGRAM_FRAME_BYTES))
    });
    let mut truncated = bytes.clone();
    truncated.truncate(bytes.len() - 3);
    c.bench_function("wire/reject truncated frame", |b| {
        b.iter(|| wire::decode(black_box(&truncated), MAX_DATAGRAM_FRAME_BYTES))
    });
}

fn bench_envelope(c: &mut Criterion) {
    let ring = Keyring::new(Key::from_bytes([7; 32]));
    for size in [300usize, 1300] {
        let plain = vec![0xA5u8; size];
        let mut counter = 0u64;
        c.bench_function(&format!("envelope/seal {size} B"), |b| {
            b.iter(|| {
                counter += 1;
                envelope::seal(&ring, NodeId(7), 1, counter, black_box(&plain))
            })
        });
        let sealed = envelope::seal(&ring, NodeId(7), 1, 1, &plain).unwrap_or_default();
        c.bench_function(&format!("envelope/open {size} B"), |b| {
            b.iter(|| envelope::open(&ring, black_box(&sealed)))
        });
        // With the replay guard: every iteration opens a fresh counter, as a receiver would.
        let packets: Vec<Vec<u8>> = (1..=4096u64)
            .map(|n| envelope::seal(&ring, NodeId(7), 1, n, &plain).unwrap_or_default())
            .collect();
        let mut guard = ReplayGuard::default();
        let mut i = 0usize;
        c.bench_function(&format!("envelope/open+replay check {size} B"), |b| {
            b.iter(|| {
                let idx = i % packets.len();
                i += 1;
                if idx == 0 {
                    guard = ReplayGuard::default();
                }
                let opened = envelope::open_checked(&ring, &mut guard, black_box(&packets[idx]));
                debug_assert!(opened.is_ok());
                opened
            })
        });
    }
}

criterion_group!(benches, bench, bench_envelope);
criterion_main!(benches);
