//! Shared test support: LANs of hosts in network namespaces ([`netns`]), the discovery probe
//! process ([`probe`]), a private etcd server ([`etcd`]) and waits on a runtime's events
//! ([`events`]). Each test file uses part of it.
#![allow(dead_code)]

pub mod etcd;
pub mod events;
pub mod netns;
pub mod probe;
