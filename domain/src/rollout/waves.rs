//! The wave planner: which devices move together. Pure and deterministic, so a controller
//! restart recomputes exactly the same waves from the same inputs.

use std::collections::{BTreeMap, BTreeSet};

use super::strategy::{Level, Strategy};

/// A device as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

impl Candidate {
    fn at(&self, level: Level) -> &str {
        self.labels.get(level.label()).map_or("", String::as_str)
    }

    /// The device's place in the hierarchy down to `level` (`lyon/stamping/3`).
    fn path(&self, level: Level) -> Vec<&str> {
        [Level::Site, Level::Area, Level::Line]
            .into_iter()
            .filter(|l| *l <= level)
            .map(|l| self.at(l))
            .collect()
    }
}

/// Splits devices into waves: the canary first, then batches. With `order_by`, devices are
/// taken in hierarchy order (then by id), otherwise by id. With `one_per`, a wave never holds
/// two devices of the same group at that level; a device that would break this waits for the
/// next wave, so waves can be smaller than `batch` but never larger.
pub fn plan_waves(devices: &[Candidate], strategy: &Strategy) -> Vec<Vec<String>> {
    let mut queue: Vec<&Candidate> = devices.iter().collect();
    queue.sort_by(|a, b| match strategy.order_by {
        Some(level) => a
            .path(level)
            .cmp(&b.path(level))
            .then_with(|| a.id.cmp(&b.id)),
        None => a.id.cmp(&b.id),
    });
    queue.dedup_by(|a, b| a.id == b.id);
    let total = queue.len();
    let mut waves = Vec::new();
    let mut first = true;
    while !queue.is_empty() {
        let size = if first {
            strategy.canary as usize
        } else {
            strategy.batch.of(total)
        }
        .max(1);
        first = false;
        let mut wave = Vec::new();
        let mut groups: BTreeSet<Vec<&str>> = BTreeSet::new();
        let mut rest = Vec::new();
        for c in queue {
            let group_free = strategy
                .one_per
                .is_none_or(|level| !groups.contains(&c.path(level)));
            if wave.len() < size && group_free {
                if let Some(level) = strategy.one_per {
                    groups.insert(c.path(level));
                }
                wave.push(c.id.clone());
            } else {
                rest.push(c);
            }
        }
        waves.push(wave);
        queue = rest;
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::super::strategy::Amount;
    use super::*;

    fn dev(id: &str, site: &str, line: &str) -> Candidate {
        Candidate {
            id: id.into(),
            labels: [
                ("site".to_string(), site.to_string()),
                ("line".to_string(), line.to_string()),
            ]
            .into(),
        }
    }

    fn fleet() -> Vec<Candidate> {
        vec![
            dev("p1", "paris", "1"),
            dev("l1", "lyon", "1"),
            dev("l2", "lyon", "1"),
            dev("l3", "lyon", "2"),
            dev("p2", "paris", "2"),
            dev("l4", "lyon", "2"),
        ]
    }

    #[test]
    fn table() {
        let s = |canary, batch, order_by, one_per| Strategy {
            canary,
            batch,
            order_by,
            one_per,
            ..Strategy::default()
        };
        let cases: Vec<(&str, Strategy, Vec<Vec<&str>>)> = vec![
            (
                "canary then 50% by id",
                s(1, Amount::Percent(50), None, None),
                vec![vec!["l1"], vec!["l2", "l3", "l4"], vec!["p1", "p2"]],
            ),
            (
                "batches of 2",
                s(2, Amount::Count(2), None, None),
                vec![vec!["l1", "l2"], vec!["l3", "l4"], vec!["p1", "p2"]],
            ),
            (
                "all at once after canary",
                s(1, Amount::Percent(100), None, None),
                vec![vec!["l1"], vec!["l2", "l3", "l4", "p1", "p2"]],
            ),
            (
                "site order, one per line",
                s(1, Amount::Count(3), Some(Level::Site), Some(Level::Line)),
                vec![vec!["l1"], vec!["l2", "l3", "p1"], vec!["l4", "p2"]],
            ),
            (
                "one per line with big batches",
                s(2, Amount::Count(10), None, Some(Level::Line)),
                vec![vec!["l1", "l3"], vec!["l2", "l4", "p1", "p2"]],
            ),
        ];
        for (name, strategy, want) in cases {
            let got = plan_waves(&fleet(), &strategy);
            let want: Vec<Vec<String>> = want
                .into_iter()
                .map(|w| w.into_iter().map(String::from).collect())
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn invariants() {
        let devices: Vec<Candidate> = (0..37)
            .map(|i| dev(&format!("d{i:02}"), "s", &format!("{}", i % 4)))
            .collect();
        for batch in [
            Amount::Count(1),
            Amount::Count(5),
            Amount::Percent(10),
            Amount::Percent(100),
        ] {
            let strategy = Strategy {
                canary: 2,
                batch,
                one_per: Some(Level::Line),
                ..Strategy::default()
            };
            let waves = plan_waves(&devices, &strategy);
            let all: BTreeSet<&String> = waves.iter().flatten().collect();
            assert_eq!(all.len(), devices.len(), "every device exactly once");
            assert_eq!(waves.iter().map(Vec::len).sum::<usize>(), devices.len());
            assert!(waves[0].len() <= 2);
            for w in &waves[1..] {
                assert!(
                    !w.is_empty() && w.len() <= batch.of(devices.len()).max(1),
                    "wave size"
                );
            }
            assert!(plan_waves(&[], &strategy).is_empty());
        }
    }
}
