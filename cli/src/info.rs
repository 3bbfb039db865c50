//! `dflock stats` and `dflock ping`.

use std::fmt::Write as _;

use crate::cli::StatsArgs;
use crate::client::{Stats, Target, probe, read_stats};
use crate::exit::{self, Failure};
use crate::output::Out;

/// Runs `dflock stats`.
pub fn run_stats(target: &Target, a: &StatsArgs, out: &mut Out) -> Result<i32, Failure> {
    let several = target.servers.len() > 1;
    for (i, addr) in target.servers.iter().enumerate() {
        let json = read_stats(target, addr).map_err(|e| Failure::client(addr, &e))?;
        if a.json {
            // The server's JSON, checked but not rewritten.
            let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
                Failure::new(exit::FAILURE, format!("{addr}: stats is not JSON: {e}"))
            })?;
            if several {
                let line = serde_json::json!({"server": addr, "stats": value});
                out.line(&line.to_string())?;
            } else {
                out.line(&json)?;
            }
        } else {
            let stats = Stats::parse(&json).map_err(|e| {
                Failure::new(exit::FAILURE, format!("{addr}: unreadable stats: {e}"))
            })?;
            if i > 0 {
                out.line("")?;
            }
            out.line(table(addr, &stats).trim_end())?;
        }
    }
    Ok(exit::OK)
}

/// Columns padded to the widest cell.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (j, cell) in row.iter().enumerate() {
            if j + 1 < row.len() {
                let _ = write!(line, "{cell:<w$}  ", w = widths[j]);
            } else {
                line.push_str(cell);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn section(text: &mut String, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        let _ = writeln!(text, "{title}: none");
        return;
    }
    let mut all = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    all.extend(rows);
    text.push_str(&columns(&all));
}

/// The readable form of one server's stats.
fn table(addr: &str, s: &Stats) -> String {
    let waiting: u64 = s.locks.iter().map(|l| l.waiters).sum::<u64>()
        + s.semaphores.iter().map(|m| m.waiters).sum::<u64>();
    let mut text = format!(
        "server {addr}: {} connection(s), {} lock(s), {} semaphore(s), {} waiter(s), {} listener pattern(s)\n\n",
        s.connections,
        s.locks.len(),
        s.semaphores.len(),
        waiting,
        s.signal_channels.len()
    );
    section(
        &mut text,
        "locks",
        &["LOCK", "HOLDER", "EXPIRES IN", "WAITERS"],
        s.locks
            .iter()
            .map(|l| {
                vec![
                    l.key.clone(),
                    if l.owner_conn_id == 0 {
                        "-".to_owned()
                    } else {
                        format!("conn {}", l.owner_conn_id)
                    },
                    format!("{:.1} s", l.lease_expires_in_s),
                    l.waiters.to_string(),
                ]
            })
            .collect(),
    );
    text.push('\n');
    section(
        &mut text,
        "semaphores",
        &["SEMAPHORE", "LIMIT", "HOLDERS", "WAITERS"],
        s.semaphores
            .iter()
            .map(|m| {
                vec![
                    m.key.clone(),
                    m.limit.to_string(),
                    m.holders.to_string(),
                    m.waiters.to_string(),
                ]
            })
            .collect(),
    );
    text.push('\n');
    let field = |v: &serde_json::Value, name: &str| match v.get(name) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => "-".to_owned(),
    };
    section(
        &mut text,
        "listeners",
        &["PATTERN", "GROUP", "LISTENERS"],
        s.signal_channels
            .iter()
            .map(|c| {
                vec![
                    field(c, "pattern"),
                    field(c, "group"),
                    field(c, "listeners"),
                ]
            })
            .collect(),
    );
    let _ = writeln!(
        text,
        "\nidle keys: {} lock(s), {} semaphore(s)",
        s.idle_locks.len(),
        s.idle_semaphores.len()
    );
    text
}

/// Runs `dflock ping`: one line per server; 121 when any is unreachable.
pub fn run_ping(target: &Target, out: &mut Out) -> Result<i32, Failure> {
    let mut code = exit::OK;
    for addr in &target.servers {
        let result = target.open(addr).and_then(|mut c| probe(&mut *c));
        match result {
            Ok((rtt, generation)) => out.line(&format!(
                "{addr}  {:.3} ms  {}",
                rtt.as_secs_f64() * 1000.0,
                generation.describe()
            ))?,
            Err(e) => {
                code = exit::UNREACHABLE;
                out.line(&format!("{addr}  unreachable: {}", exit::describe(&e)))?;
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_every_section() {
        let json = r#"{"connections":3,"locks":[{"key":"orders","owner_conn_id":7,"lease_expires_in_s":12.5,"waiters":2}],
            "semaphores":[{"key":"deploy","limit":2,"holders":1,"waiters":0}],"idle_locks":[],"idle_semaphores":[{"key":"x","idle_s":1}],
            "signal_channels":[{"pattern":"jobs.>","listeners":1}]}"#;
        let stats = Stats::parse(json).expect("valid stats");
        let text = table("127.0.0.1:6388", &stats);
        assert!(text.contains("3 connection(s)"), "{text}");
        assert!(text.contains("2 waiter(s)"), "{text}");
        assert!(text.contains("orders  conn 7  12.5 s      2"), "{text}");
        assert!(text.contains("deploy     2      1        0"), "{text}");
        assert!(text.contains("jobs.>   -      1"), "{text}");
        assert!(
            text.contains("idle keys: 0 lock(s), 1 semaphore(s)"),
            "{text}"
        );
    }
}
