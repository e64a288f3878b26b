//! Fuzz target `io_ops`: decodes a back end and a sequence of I/O steps and checks them
//! against the reference model in `aioctx_fuzzcheck::io_ops` (the same `run` the corpus
//! replay calls).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aioctx_fuzzcheck::io_ops::run_bytes(data));
