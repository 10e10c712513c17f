//! Builds and runs the embedding example: it must elect a queen, apply a spec, see it committed
//! on every node and shut down cleanly.
#![allow(clippy::unwrap_used)]

#[test]
fn the_embedding_example_runs_a_colony_to_completion() {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_embed"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill deadline: a hung example fails the test instead of hanging CI.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .is_err()
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    guard.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("a queen was crowned"), "{stdout}");
    assert!(
        stdout.contains("embedded (spec version 1) committed"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(" runs ").count(), 3, "{stdout}");
    assert!(stdout.trim_end().ends_with("embed: ok"), "{stdout}");
}
