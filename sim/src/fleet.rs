//! The shape of a simulated fleet: `--devices N` (one site), or a small TOML file of sites ×
//! areas × lines, each line with its devices:
//!
//! ```toml
//! sites = ["lyon", "paris"]
//! areas = ["stamping", "welding"]
//! lines = 3
//! devices_per_line = 10
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Most devices one simulator process runs.
pub const MAX_DEVICES: usize = 20_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub sites: Vec<String>,
    #[serde(default = "one_area")]
    pub areas: Vec<String>,
    #[serde(default = "one")]
    pub lines: usize,
    pub devices_per_line: usize,
}

fn one_area() -> Vec<String> {
    vec!["main".into()]
}

fn one() -> usize {
    1
}

/// One simulated device: its id and the labels `device add` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDevice {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

impl SimDevice {
    /// `k=v,k=v`, as `device add --labels` takes them.
    pub fn labels_text(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Shape {
    /// `n` devices on one site, one area, one line.
    pub fn flat(n: usize) -> Shape {
        Shape {
            sites: vec!["sim".into()],
            areas: one_area(),
            lines: 1,
            devices_per_line: n,
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Shape> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the fleet file {}", path.display()))?;
        let shape: Shape = toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a fleet file (sites = [..], areas = [..], lines = N, devices_per_line = N)",
                path.display()
            )
        })?;
        Ok(shape)
    }

    /// The devices, after checking the shape makes sense.
    pub fn devices(&self) -> anyhow::Result<Vec<SimDevice>> {
        if self.sites.is_empty() || self.areas.is_empty() {
            bail!("the fleet needs at least one site and one area");
        }
        if self.lines == 0 || self.devices_per_line == 0 {
            bail!("the fleet needs at least one line and one device per line");
        }
        let total = self
            .sites
            .len()
            .saturating_mul(self.areas.len())
            .saturating_mul(self.lines)
            .saturating_mul(self.devices_per_line);
        if total > MAX_DEVICES {
            bail!(
                "{total} devices is more than one simulator runs ({MAX_DEVICES}); run several simulators with different --prefix"
            );
        }
        for name in self.sites.iter().chain(&self.areas) {
            edgefleet_protocol::ids::validate_label("site", name)
                .map_err(|e| anyhow::anyhow!("'{name}' cannot be a site or area name: {e}"))?;
        }
        let mut out = Vec::with_capacity(total);
        for site in &self.sites {
            for area in &self.areas {
                for line in 1..=self.lines {
                    for n in 1..=self.devices_per_line {
                        let labels = BTreeMap::from([
                            ("site".to_owned(), site.clone()),
                            ("area".to_owned(), area.clone()),
                            ("line".to_owned(), line.to_string()),
                            ("fleet".to_owned(), "sim".to_owned()),
                        ]);
                        out.push(SimDevice {
                            id: format!("{site}-{area}-{line}-{n:05}"),
                            labels,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_gives_every_device_its_labels() {
        let shape: Shape = toml::from_str(
            "sites = [\"lyon\", \"paris\"]\nareas = [\"a\"]\nlines = 2\ndevices_per_line = 3\n",
        )
        .unwrap();
        let devices = shape.devices().unwrap();
        assert_eq!(devices.len(), 12);
        assert_eq!(devices[0].id, "lyon-a-1-00001");
        assert_eq!(
            devices[0].labels_text(),
            "area=a,fleet=sim,line=1,site=lyon"
        );
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        for (text, why) in [
            ("sites = []\ndevices_per_line = 1\n", "at least one site"),
            (
                "sites = [\"x\"]\ndevices_per_line = 0\n",
                "one device per line",
            ),
            (
                "sites = [\"x\"]\ndevices_per_line = 100000\n",
                "more than one simulator",
            ),
            (
                "sites = [\"a b\"]\ndevices_per_line = 1\n",
                "cannot be a site",
            ),
        ] {
            let shape: Shape = toml::from_str(text).unwrap();
            let err = shape.devices().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(toml::from_str::<Shape>("sites = [\"x\"]\nfoo = 1\n").is_err());
    }
}
