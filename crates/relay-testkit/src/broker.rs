//! RabbitMQ failure injection through `rabbitmqctl`.

use std::process::Command;

/// Closes every broker connection whose client-provided name contains `marker` (the bus
/// names its connections `relay-bus {prefix}{origin}`); returns how many, or why it could not.
pub fn close_connections(marker: &str) -> Result<usize, String> {
    let listed = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--no-table-headers",
            "-q",
            "pid",
            "client_properties",
        ])
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if !listed.status.success() {
        return Err(format!(
            "rabbitmqctl list_connections failed: {}",
            String::from_utf8_lossy(&listed.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let pids: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(marker))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for pid in &pids {
        let closed = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: simulated broker failure"])
            .output()
            .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
        if !closed.status.success() {
            return Err(format!(
                "rabbitmqctl close_connection failed: {}",
                String::from_utf8_lossy(&closed.stderr).trim()
            ));
        }
    }
    Ok(pids.len())
}

/// Deletes every queue whose name starts with `prefix` (a test's own queues); returns how many.
/// Best effort: errors are ignored, since this runs during clean-up.
pub fn delete_queues(prefix: &str) -> usize {
    let Ok(listed) = Command::new("rabbitmqctl")
        .args(["list_queues", "--no-table-headers", "-q", "name"])
        .output()
    else {
        return 0;
    };
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(prefix))
        .filter(|name| {
            Command::new("rabbitmqctl")
                .args(["delete_queue", name])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .count()
}
