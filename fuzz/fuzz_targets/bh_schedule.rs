//! Fuzz target `bh_schedule`: decodes a sequence of operations and checks it against the
//! reference model in `aioctx_fuzzcheck::bh` (the same `run` the corpus replay and the
//! proptests call).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aioctx_fuzzcheck::bh::run_bytes(data));
