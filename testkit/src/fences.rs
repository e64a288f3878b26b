//! Running a test binary again once per fence mode: the mode (`AIOCTX_FENCES`) is
//! process-wide and chosen once, so a second mode needs a second process.

use std::process::Command;

/// The fence modes, by the names `AIOCTX_FENCES` takes.
pub const FENCE_MODES: [&str; 2] = ["symmetric", "asymmetric"];

/// Runs the current test binary again with `args`, once per fence mode, with
/// `AIOCTX_FENCES` set to the mode and `child_env` set to `1` (so the calling test can
/// tell it runs in a child and return at once); panics with the child's output when a
/// run fails or runs no test. Where the kernel refuses `membarrier`, the asymmetric run
/// is skipped with a printed message. Returns each mode that ran with its output, for
/// further checks.
///
/// ```no_run
/// const CHILD: &str = "MY_SUITE_FENCES_CHILD";
/// if std::env::var_os(CHILD).is_none() {
///     aioctx_testkit::rerun_in_each_fence_mode(CHILD, &["--skip", "this_test"]);
/// }
/// ```
pub fn rerun_in_each_fence_mode(child_env: &str, args: &[&str]) -> Vec<(&'static str, String)> {
    let mut ran = Vec::new();
    for mode in FENCE_MODES {
        let out = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args(args)
            .env(child_env, "1")
            .env("AIOCTX_FENCES", mode)
            .output()
            .expect("running the test binary again");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success()
            && mode == "asymmetric"
            && text.contains("AIOCTX_FENCES=asymmetric forces")
        {
            crate::say_skipped(&format!(
                "skipped {}: the asymmetric pass needs membarrier(PRIVATE_EXPEDITED), \
                 unavailable here",
                crate::test_name()
            ));
            continue;
        }
        assert!(out.status.success(), "AIOCTX_FENCES={mode}:\n{text}");
        assert!(
            text.contains("test result: ok"),
            "AIOCTX_FENCES={mode}: no test ran:\n{text}"
        );
        ran.push((mode, text));
    }
    ran
}
