//! Routing: which route takes a message. Pure and synchronous, no I/O.

pub mod path;
pub mod table;

pub use path::JsonPath;
pub use table::{MatchValue, Predicate, PredicateTest, RouteTable};
