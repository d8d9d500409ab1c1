//! uipd-perf: a netperf-style benchmark tool.
fn main() {}
