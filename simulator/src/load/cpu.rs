//! CPU time of the pipeline's local components, read from `/proc` (Linux), so that a load
//! run can say what each notification cost: CPU seconds per 1,000, not bare rates, because
//! a rate depends on how busy the machine is that day and CPU per unit of work much less.
//!
//! A component is every process whose command name is the component's (`postgres` counts
//! every backend, `beam.smp` the RabbitMQ node); the load generator is this process. A
//! process that exits between two readings loses its last interval: the services keep
//! their connections for the whole run, so that is noise, not a bias.

use std::collections::BTreeMap;
use std::fs;

/// The components a run looks for, in report order: (label, process command names).
pub const COMPONENTS: [(&str, &[&str]); 5] = [
    ("gateway", &["wxpay-gateway"]),
    ("worker", &["wxpay-worker"]),
    ("rabbitmq", &["beam.smp"]),
    ("postgresql", &["postgres"]),
    ("redis", &["redis-server"]),
];

/// The load generator's own label.
pub const LOAD_GENERATOR: &str = "load generator";

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): 100 on every Linux ABI that
/// Rust targets; `sysconf` would need libc for a constant.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds used so far, per component label, of the processes alive now. Components
/// with no process on this machine are absent (a remote database is not counted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuReading {
    /// label -> (pid -> CPU seconds of that process).
    by_component: BTreeMap<&'static str, BTreeMap<u32, f64>>,
}

impl CpuReading {
    /// Reads every process once. Unreadable entries (a process that just exited, another
    /// user's process under hidepid) are skipped.
    pub fn now() -> Self {
        let mut reading = CpuReading::default();
        let own = std::process::id();
        let Ok(entries) = fs::read_dir("/proc") else {
            return reading;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((name, seconds)) = parse_stat(&stat) else {
                continue;
            };
            let label = if pid == own {
                Some(LOAD_GENERATOR)
            } else {
                COMPONENTS
                    .iter()
                    .find(|(_, names)| names.contains(&name))
                    .map(|(label, _)| *label)
            };
            if let Some(label) = label {
                reading
                    .by_component
                    .entry(label)
                    .or_default()
                    .insert(pid, seconds);
            }
        }
        reading
    }

    /// CPU seconds each component used between `earlier` and `self`: per process the
    /// difference (a process born since counts from zero).
    pub fn since(&self, earlier: &CpuReading) -> BTreeMap<&'static str, f64> {
        self.by_component
            .iter()
            .map(|(label, pids)| {
                let before = earlier.by_component.get(label);
                let used = pids
                    .iter()
                    .map(|(pid, now)| {
                        let then = before.and_then(|b| b.get(pid)).copied().unwrap_or(0.0);
                        (now - then).max(0.0)
                    })
                    .sum();
                (*label, used)
            })
            .collect()
    }
}

/// `(comm, utime + stime in seconds)` of a `/proc/<pid>/stat` line. The command name sits
/// in parentheses and may itself hold spaces or parentheses, so fields are counted from the
/// last `)` (proc(5): utime and stime are fields 14 and 15).
fn parse_stat(stat: &str) -> Option<(&str, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace();
    // After the name: field 3 (state) is the first; utime is field 14.
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((name, (utime + stime) as f64 / TICKS_PER_SECOND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "4242 (beam.smp) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 30 0 100";
        assert_eq!(parse_stat(line), Some(("beam.smp", 3.0)));
        let odd = "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c", 0.03)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_the_load_generator_and_its_cpu_only_grows() {
        let before = CpuReading::now();
        // Burn a little CPU so that at least one tick passes.
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = CpuReading::now();
        let used = after.since(&before);
        let own = used.get(LOAD_GENERATOR).copied();
        assert!(own.is_some_and(|s| s >= 0.0), "{used:?}");
        assert!(after.by_component[LOAD_GENERATOR].values().sum::<f64>() > 0.0);
    }
}
