//! Fixtures for the end-to-end tests: a real `docker-registry` upstream, a token server of our
//! own, deterministic seeding over the registry API, a fault-injecting front, and helpers to find
//! tools and ports. See TESTBED.md for the facts they rely on.
//!
//! Most tests want [`TestBed::start`]: a seeded upstream in one of the [`Mode`]s.

pub mod client_auth;
pub mod clients;
pub mod content;
pub mod corrupt;
pub mod error;
pub mod fault_front;
pub mod faults_chaos;
pub mod faults_kit;
pub mod garage;
pub mod pki;
pub mod ports;
pub mod proxy;
pub mod proxy_process;
pub mod registry;
pub mod seed;
pub mod serve;
pub mod skopeo;
pub mod storage_blobs;
pub mod testbed;
pub mod token_server;
pub mod tools;
pub mod warm;

pub use content::{Blob, Image, Index, Seeded};
pub use error::{FixtureError, FixtureResult};
pub use fault_front::{Action, FaultFront, PathMatch, RecordedRequest, Rule, Source};
pub use pki::Pki;
pub use ports::{free_addr, free_port};
pub use proxy::{ProxyHandle, docker_hub_route_toml};
pub use registry::{Registry, RegistryAuth, RegistryConfig};
pub use seed::{PushAuth, Pusher, SeedOptions, seed};
pub use testbed::{Mode, TestBed};
pub use token_server::{TokenRequest, TokenServer};
pub use tools::{find_tool, require_tool, require_tools};
