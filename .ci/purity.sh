#!/usr/bin/env bash
# Purity gate: dna and swarm-core (and so the simulated code path) must stay sans-IO.
# clippy.toml's disallowed-methods already forbids Instant::now, SystemTime::now and the global
# RNG in every crate that does not explicitly allow them; this checks the dependency graph and
# the sources for what clippy cannot see.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for crate in swarm-core dna; do
  if cargo tree -p "$crate" -e normal --prefix none --locked 2>/dev/null \
      | grep -E '^(tokio|mio|socket2|async-std|smol|quinn|reqwest|hyper|libc) ' ; then
    echo "purity: $crate depends on an I/O crate (above)"; fail=1
  fi
  if grep -rnE 'std::net::(UdpSocket|TcpStream|TcpListener)|Instant::now|SystemTime::now|thread_rng|rand::rng\(\)|std::fs::|std::thread::sleep' "$crate/src"; then
    echo "purity: $crate/src does I/O or reads a clock (above)"; fail=1
  fi
done
if grep -rnE 'Instant::now|SystemTime::now|thread_rng|rand::rng\(\)' sim/src --include=*.rs | grep -v 'sim/src/main.rs'; then
  echo "purity: the simulated code path reads a clock or the global RNG (above)"; fail=1
fi
[ "$fail" = 0 ] && echo "purity: dna and swarm-core are sans-IO"
exit "$fail"
