//! The uipd daemon.
fn main() {
    // netns frontend: the re-executed namespace helper (see uipd::dataplane::netns).
    // It must run before anything starts a thread, so it stays first in main().
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == uipd::dataplane::netns::CHILD_ARG)
    {
        uipd::dataplane::netns::child_main(&args[2..]);
    }
    // end netns frontend
}
