//! The `aioctx` command's library: argument parsing ([`cli`]), the kick-cost report
//! ([`kickstat`]), the graph-lock stress ([`stress`]) and the JSON schemas they print
//! ([`schema`]). The binary (`src/main.rs`) only dispatches; the integration tests read
//! the binary's JSON back through [`schema`].

pub mod cli;
pub mod kickstat;
pub mod progress;
pub mod schema;
pub mod stress;
mod sys;
mod thread_probe;
