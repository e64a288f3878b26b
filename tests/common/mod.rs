//! Helpers shared by the integration tests: the workspace's one test kit
//! (`aioctx-testkit`, in `testkit/`), re-exported so that tests keep writing
//! `common::…`. Each test binary uses a subset of them.
#![allow(dead_code, unused_imports)]

pub use aioctx_testkit::*;
