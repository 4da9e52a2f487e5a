//! Eviction signals and hard thresholds, in the kubelet's `--eviction-hard`
//! syntax (`memory.available<100Mi,nodefs.available<10%`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rudder_apimachinery::resources::Amount;

/// What the agent watches running out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// Memory not in the node's working set: capacity minus working set.
    MemoryAvailable,
    /// Free bytes of the filesystem holding the agent's data (pods, logs,
    /// containers' writable layers).
    NodeFsAvailable,
    NodeFsInodesFree,
    /// Free bytes of the filesystem holding images.
    ImageFsAvailable,
    ImageFsInodesFree,
    /// Process ids left before `kernel.pid_max`.
    PidAvailable,
}

/// The node condition a signal's pressure shows as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pressure {
    Memory,
    Disk,
    Pid,
}

impl Pressure {
    /// The Node condition's type.
    pub fn condition_type(self) -> &'static str {
        match self {
            Pressure::Memory => "MemoryPressure",
            Pressure::Disk => "DiskPressure",
            Pressure::Pid => "PIDPressure",
        }
    }
}

/// What an eviction for a signal frees, as the kubelet names it in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Memory,
    EphemeralStorage,
    Inodes,
    Pids,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::EphemeralStorage => "ephemeral-storage",
            Resource::Inodes => "inodes",
            Resource::Pids => "pids",
        }
    }
}

impl Signal {
    pub const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    pub fn pressure(self) -> Pressure {
        match self {
            Signal::MemoryAvailable => Pressure::Memory,
            Signal::PidAvailable => Pressure::Pid,
            _ => Pressure::Disk,
        }
    }

    pub fn resource(self) -> Resource {
        match self {
            Signal::MemoryAvailable => Resource::Memory,
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => Resource::EphemeralStorage,
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => Resource::Inodes,
            Signal::PidAvailable => Resource::Pids,
        }
    }

    /// Whether amounts of this signal are bytes (printed `100Mi`) or
    /// counts (printed `5k`).
    fn is_bytes(self) -> bool {
        matches!(
            self.resource(),
            Resource::Memory | Resource::EphemeralStorage
        )
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A threshold's level: an absolute amount, or a share of the capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Level {
    Quantity(Amount),
    /// Between 0 and 1.
    Percentage(f64),
}

/// `signal < level`: the signal's observed availability below the level
/// means pressure. Hard thresholds only (no grace period).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub level: Level,
}

impl Threshold {
    /// The level as an amount for a resource of `capacity`
    /// (`GetThresholdQuantity`).
    pub fn quantity(&self, capacity: i64) -> Amount {
        match self.level {
            Level::Quantity(q) => q,
            Level::Percentage(p) => {
                let value = (capacity as f64 * p) as i64;
                if self.signal.is_bytes() {
                    Amount::from_bytes(value)
                } else {
                    Amount::from_int(value)
                }
            }
        }
    }

    /// Whether `available` out of `capacity` crosses the threshold.
    pub fn met(&self, available: i64, capacity: i64) -> bool {
        self.quantity(capacity).value() > i128::from(available)
    }
}

/// Why an `--eviction-hard` value is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThresholdError {
    #[error("unsupported eviction signal {0}")]
    UnknownSignal(String),
    #[error("eviction threshold {0:?} has no '<' operator")]
    NoOperator(String),
    #[error("invalid eviction threshold quantity {value:?} for {signal}")]
    InvalidQuantity { signal: Signal, value: String },
    #[error("eviction percentage threshold {signal} must be >= 0% and <= 100%: {value}")]
    PercentageOutOfRange { signal: Signal, value: String },
    #[error("eviction threshold {signal} must be positive: {value}")]
    NotPositive { signal: Signal, value: String },
}

impl FromStr for Signal {
    type Err = ThresholdError;

    fn from_str(s: &str) -> Result<Signal, ThresholdError> {
        Signal::ALL
            .into_iter()
            .find(|signal| signal.name() == s)
            .ok_or_else(|| ThresholdError::UnknownSignal(s.to_string()))
    }
}

/// The hard thresholds applied when none are given: k3s's (the kubelet's
/// memory and inode defaults, but 5% for both filesystems where the kubelet
/// says 10% and 15%), because a single-binary cluster often shares one disk
/// with everything else on the machine, as k3s does.
pub fn default_hard() -> Vec<Threshold> {
    parse_hard(
        "memory.available<100Mi,nodefs.available<5%,nodefs.inodesFree<5%,imagefs.available<5%",
    )
    .expect("the defaults parse")
}

/// Parses `--eviction-hard`: comma-separated `signal<value` statements, each
/// value a quantity or a percentage of the capacity. `0%` and `100%` turn a
/// signal off, as with the kubelet; an empty string means no thresholds.
pub fn parse_hard(text: &str) -> Result<Vec<Threshold>, ThresholdError> {
    let mut by_signal: BTreeMap<Signal, Threshold> = BTreeMap::new();
    for statement in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (signal, value) = statement
            .split_once('<')
            .ok_or_else(|| ThresholdError::NoOperator(statement.to_string()))?;
        let signal: Signal = signal.trim().parse()?;
        let value = value.trim();
        let level = if let Some(percent) = value.strip_suffix('%') {
            if value == "0%" || value == "100%" {
                by_signal.remove(&signal);
                continue;
            }
            let percent: f64 = percent
                .parse()
                .map_err(|_| ThresholdError::InvalidQuantity {
                    signal,
                    value: value.to_string(),
                })?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(ThresholdError::PercentageOutOfRange {
                    signal,
                    value: value.to_string(),
                });
            }
            Level::Percentage(percent / 100.0)
        } else {
            let amount = Amount::parse(value).ok_or_else(|| ThresholdError::InvalidQuantity {
                signal,
                value: value.to_string(),
            })?;
            if amount.is_zero() || amount.is_negative() {
                return Err(ThresholdError::NotPositive {
                    signal,
                    value: value.to_string(),
                });
            }
            Level::Quantity(amount)
        };
        by_signal.insert(signal, Threshold { signal, level });
    }
    Ok(by_signal.into_values().collect())
}

/// What a set of thresholds keeps back from a resource of `capacity` (the
/// part of capacity that is not allocatable).
pub fn reserved(thresholds: &[Threshold], signal: Signal, capacity: i64) -> i64 {
    thresholds
        .iter()
        .find(|t| t.signal == signal)
        .map(|t| i64::try_from(t.quantity(capacity).value()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(s: &str) -> Level {
        Level::Quantity(Amount::parse(s).unwrap())
    }

    #[test]
    fn eviction_hard_statements_parse_as_the_kubelet_parses_them() {
        type Parsed = Result<Vec<(Signal, Level)>, ThresholdError>;
        let cases: &[(&str, Parsed)] = &[
            ("", Ok(vec![])),
            (
                "memory.available<100Mi,nodefs.available<10%",
                Ok(vec![
                    (Signal::MemoryAvailable, amount("100Mi")),
                    (Signal::NodeFsAvailable, Level::Percentage(0.1)),
                ]),
            ),
            (
                " pid.available < 1k , nodefs.inodesFree<5% ",
                Ok(vec![
                    (Signal::NodeFsInodesFree, Level::Percentage(0.05)),
                    (Signal::PidAvailable, amount("1k")),
                ]),
            ),
            // 0% and 100% switch a signal off.
            ("imagefs.available<0%,memory.available<100%", Ok(vec![])),
            (
                "memory.available<1Gi,memory.available<2Gi",
                Ok(vec![(Signal::MemoryAvailable, amount("2Gi"))]),
            ),
            (
                "memory.free<1Gi",
                Err(ThresholdError::UnknownSignal("memory.free".into())),
            ),
            (
                "memory.available>1Gi",
                Err(ThresholdError::NoOperator("memory.available>1Gi".into())),
            ),
            (
                "memory.available<lots",
                Err(ThresholdError::InvalidQuantity {
                    signal: Signal::MemoryAvailable,
                    value: "lots".into(),
                }),
            ),
            (
                "nodefs.available<150%",
                Err(ThresholdError::PercentageOutOfRange {
                    signal: Signal::NodeFsAvailable,
                    value: "150%".into(),
                }),
            ),
            (
                "memory.available<0",
                Err(ThresholdError::NotPositive {
                    signal: Signal::MemoryAvailable,
                    value: "0".into(),
                }),
            ),
        ];
        for (text, want) in cases {
            let got = parse_hard(text).map(|ts| {
                ts.into_iter()
                    .map(|t| (t.signal, t.level))
                    .collect::<Vec<_>>()
            });
            assert_eq!(&got, want, "{text:?}");
        }
    }

    #[test]
    fn defaults_are_k3s() {
        let defaults = default_hard();
        assert_eq!(defaults.len(), 4);
        assert_eq!(
            reserved(&defaults, Signal::MemoryAvailable, 1 << 30),
            100 << 20
        );
        assert_eq!(
            reserved(&defaults, Signal::NodeFsAvailable, 1000 << 20),
            50 << 20
        );
        assert_eq!(reserved(&defaults, Signal::PidAvailable, 4_194_304), 0);
    }

    #[test]
    fn thresholds_are_met_below_their_level() {
        let t = parse_hard("memory.available<100Mi,nodefs.inodesFree<5%").unwrap();
        assert!(t[0].met((100 << 20) - 1, 1 << 30));
        assert!(!t[0].met(100 << 20, 1 << 30));
        assert!(t[1].met(49, 1000));
        assert!(!t[1].met(50, 1000));
        assert_eq!(t[0].quantity(0).to_string(), "100Mi");
        assert_eq!(t[1].quantity(1_000_000).to_string(), "50k");
        let nodefs = parse_hard("nodefs.available<10%").unwrap();
        assert_eq!(nodefs[0].quantity(10 << 30).to_string(), "1Gi");
    }
}
