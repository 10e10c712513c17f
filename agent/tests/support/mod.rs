//! Shared test support: LANs of hosts in network namespaces ([`netns`]), the discovery probe
//! process ([`probe`]) and a private etcd server ([`etcd`]). Each test file uses part of it.
#![allow(dead_code)]

pub mod etcd;
pub mod netns;
pub mod probe;
