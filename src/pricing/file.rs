//! The user's price file (`prices.yaml`): per region, a month of each instance type, a
//! GiB-month of each disk category and a month of renewal of each instance type, read exactly
//! (amounts from their text, never through floats) and checked, each problem at its
//! `file:line:col`. Its prices win over ECS's list prices.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::money::Money;
use crate::policy::node::{Node, Value};

/// The user's prices (`prices.yaml`), per region: a month of each instance type, a GiB-month of
/// each disk category, and optionally a month of renewal of each instance type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceFile {
    pub path: PathBuf,
    pub currency: String,
    /// region → its prices.
    pub regions: BTreeMap<String, RegionPrices>,
}

/// One region's prices in a price file, in minor units of the file's currency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionPrices {
    pub instance_types: BTreeMap<String, i64>,
    /// Per GiB-month, in hundredths of a minor unit (so ¥0.35 per GiB is 3500).
    pub disks_per_gb: BTreeMap<String, i64>,
    pub renewal: BTreeMap<String, i64>,
}

/// Why a price file cannot be used: each problem at its `file:line:col`.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct PriceFileError {
    pub problems: Vec<String>,
}

const REGION_KEYS: [&str; 3] = ["instance_types", "disks_per_gb", "renewal"];

impl PriceFile {
    /// Reads and checks a price file.
    pub fn load(path: &Path) -> Result<PriceFile, PriceFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| PriceFileError {
            problems: vec![format!(
                "{}: cannot read the price file: {e}",
                path.display()
            )],
        })?;
        PriceFile::parse(path, &text)
    }

    /// Parses the text of a price file; `path` names it in problems.
    pub fn parse(path: &Path, text: &str) -> Result<PriceFile, PriceFileError> {
        let name = path.display().to_string();
        let root: Node = serde_saphyr::from_str(text).map_err(|e| PriceFileError {
            problems: vec![format!("{name}: not YAML: {e}")],
        })?;
        let mut problems = Vec::new();
        let at = |n: &Node| format!("{name}:{}:{}", n.pos.line, n.pos.col);
        let mut out = PriceFile {
            path: path.to_path_buf(),
            ..PriceFile::default()
        };
        let Value::Map(top) = &root.value else {
            return Err(PriceFileError {
                problems: vec![format!(
                    "{}: a price file is a mapping with `currency` and `regions`, not {}",
                    at(&root),
                    root.value.kind()
                )],
            });
        };
        for (k, v) in top {
            match (&k.value, &v.value) {
                (Value::Str(key), Value::Str(c)) if key == "currency" => {
                    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
                        out.currency = c.clone();
                    } else {
                        problems.push(format!(
                            "{}: currency {c:?} is not an ISO 4217 code such as CNY or USD",
                            at(v)
                        ));
                    }
                }
                (Value::Str(key), Value::Map(regions)) if key == "regions" => {
                    for (rk, rv) in regions {
                        let region = match &rk.value {
                            // A known region's near miss is a typo whose prices would never
                            // be used (a region too new to be known is taken as written).
                            Value::Str(r) if let Some(meant) = misspelt_region(r) => {
                                problems.push(format!(
                                    "{}: {r:?} is not an ECS region; did you mean {meant}?",
                                    at(rk)
                                ));
                                continue;
                            }
                            Value::Str(r) if crate::ecs::client::valid_region(r) => r.clone(),
                            other => {
                                problems.push(format!(
                                    "{}: {} is not a region id such as cn-hangzhou",
                                    at(rk),
                                    other.kind()
                                ));
                                continue;
                            }
                        };
                        let prices = region_prices(&name, rv, &mut problems);
                        out.regions.insert(region, prices);
                    }
                }
                (Value::Str(key), _) if key == "currency" || key == "regions" => {
                    problems.push(format!(
                        "{}: `{key}` must be {}, not {}",
                        at(v),
                        if key == "currency" {
                            "a currency code"
                        } else {
                            "a mapping of region ids"
                        },
                        v.value.kind()
                    ));
                }
                (other, _) => problems.push(format!(
                    "{}: unknown key {}; a price file has `currency` and `regions`",
                    at(k),
                    other.kind()
                )),
            }
        }
        if out.currency.is_empty() && problems.is_empty() {
            problems.push(format!(
                "{name}: `currency` is missing (the currency of every price, e.g. CNY)"
            ));
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(PriceFileError { problems })
        }
    }

    fn region(&self, region: &str) -> Option<&RegionPrices> {
        self.regions.get(region)
    }

    /// A month of `instance_type` in `region`, when the file gives it.
    pub fn instance(&self, region: &str, instance_type: &str) -> Option<Money> {
        let v = *self.region(region)?.instance_types.get(instance_type)?;
        Some(Money::new(v, self.currency.clone()))
    }

    /// A month of a disk, when the file prices its category in `region`.
    pub fn disk(&self, region: &str, category: &str, size_gb: u32) -> Option<Money> {
        let per_gb = *self.region(region)?.disks_per_gb.get(category)?;
        let v = (per_gb * i64::from(size_gb) + 50) / 100;
        Some(Money::new(v, self.currency.clone()))
    }

    /// A month of renewal of `instance_type`, when the file gives it.
    pub fn renewal(&self, region: &str, instance_type: &str) -> Option<Money> {
        let v = *self.region(region)?.renewal.get(instance_type)?;
        Some(Money::new(v, self.currency.clone()))
    }
}

/// The known region `r` most likely misspells: one or two letters off, and not a region of
/// the same name with another number (`ap-southeast-8` beside `ap-southeast-1` may be new).
fn misspelt_region(r: &str) -> Option<&'static str> {
    if crate::policy::is_known_region(r) {
        return None;
    }
    let stem = |s: &str| s.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
    crate::policy::ECS_REGIONS
        .iter()
        .copied()
        .filter(|k| stem(k) != stem(r))
        .map(|k| (crate::policy::edit_distance(r, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn region_prices(name: &str, node: &Node, problems: &mut Vec<String>) -> RegionPrices {
    let at = |n: &Node| format!("{name}:{}:{}", n.pos.line, n.pos.col);
    let mut out = RegionPrices::default();
    let Value::Map(entries) = &node.value else {
        problems.push(format!(
            "{}: a region's prices are a mapping ({}), not {}",
            at(node),
            REGION_KEYS.join(", "),
            node.value.kind()
        ));
        return out;
    };
    for (k, v) in entries {
        let key = match &k.value {
            Value::Str(s) if REGION_KEYS.contains(&s.as_str()) => s.as_str(),
            other => {
                let named = match other {
                    Value::Str(s) => {
                        let near = crate::policy::closest(s, &REGION_KEYS)
                            .map(|c| format!(" (did you mean `{c}`?)"))
                            .unwrap_or_default();
                        format!("`{s}`{near}")
                    }
                    other => other.kind(),
                };
                problems.push(format!(
                    "{}: unknown key {named}; a region has {}",
                    at(k),
                    REGION_KEYS.join(", ")
                ));
                continue;
            }
        };
        let Value::Map(items) = &v.value else {
            problems.push(format!(
                "{}: `{key}` is a mapping of names to amounts, not {}",
                at(v),
                v.value.kind()
            ));
            continue;
        };
        for (ik, iv) in items {
            let Value::Str(item) = &ik.value else {
                problems.push(format!("{}: {} is not a name", at(ik), ik.value.kind()));
                continue;
            };
            if (key == "instance_types" || key == "renewal") && !item.starts_with("ecs.") {
                problems.push(format!(
                    "{}: {item:?} is not an instance type such as ecs.g6.large",
                    at(ik)
                ));
                continue;
            }
            // Per-GiB disk prices keep two more decimals than a currency has.
            let places = if key == "disks_per_gb" { 4 } else { 2 };
            match amount(&iv.value, places) {
                Ok(a) => {
                    let map = match key {
                        "instance_types" => &mut out.instance_types,
                        "disks_per_gb" => &mut out.disks_per_gb,
                        _ => &mut out.renewal,
                    };
                    map.insert(item.clone(), a);
                }
                Err(why) => problems.push(format!("{}: {item}: {why}", at(iv))),
            }
        }
    }
    out
}

/// An amount of at most `places` decimals, in units of 10^-places, exactly: numbers are read
/// from their text, never summed as floats.
fn amount(v: &Value, places: u32) -> Result<i64, String> {
    let text = match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f}"),
        Value::Str(s) => s.clone(),
        other => return Err(format!("expected an amount, found {}", other.kind())),
    };
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("{t:?} is negative; a price is 0 or more"));
    }
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (!frac.is_empty() && !digits(frac)) || frac.len() > places as usize {
        return Err(format!(
            "{t:?} is not an amount of at most {places} decimals, such as 12.5"
        ));
    }
    let scale = 10_i64.pow(places);
    let w: i64 = whole.parse().map_err(|_| format!("{t:?} is too large"))?;
    let f: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<width$}", width = places as usize)
            .parse()
            .map_err(|_| format!("{t:?} is not an amount"))?
    };
    w.checked_mul(scale)
        .and_then(|x| x.checked_add(f))
        .ok_or_else(|| format!("{t:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PriceFile, PriceFileError> {
        PriceFile::parse(Path::new("prices.yaml"), text)
    }

    #[test]
    fn a_price_file_reads_exactly() {
        let f = parse(
            "currency: CNY\nregions:\n  cn-hangzhou:\n    instance_types:\n      ecs.g6.large: 300.4\n    disks_per_gb:\n      cloud_essd: 0.8125\n    renewal:\n      ecs.g6.large: '200'\n",
        )
        .unwrap();
        assert_eq!(
            f.instance("cn-hangzhou", "ecs.g6.large"),
            Some(Money::new(30_040, "CNY"))
        );
        // 0.8125 × 40 GiB = 32.50.
        assert_eq!(
            f.disk("cn-hangzhou", "cloud_essd", 40),
            Some(Money::new(3_250, "CNY"))
        );
        assert_eq!(
            f.renewal("cn-hangzhou", "ecs.g6.large"),
            Some(Money::new(20_000, "CNY"))
        );
        assert_eq!(f.instance("cn-beijing", "ecs.g6.large"), None);
    }

    #[test]
    fn a_region_one_letter_off_is_a_typo_and_a_new_number_is_not() {
        assert_eq!(misspelt_region("cn-hangzou"), Some("cn-hangzhou"));
        assert_eq!(misspelt_region("cn-hangzhou"), None);
        for new in ["ap-southeast-8", "us-west-2", "eu-west-2", "me-central-9"] {
            assert_eq!(misspelt_region(new), None, "{new}");
        }
    }

    #[test]
    fn a_negative_price_says_so() {
        let e = parse("currency: CNY\nregions:\n  cn-hangzhou:\n    instance_types:\n      ecs.g6.large: -300\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "prices.yaml:5:21: ecs.g6.large: \"-300\" is negative; a price is 0 or more"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_bad_price_file_names_every_problem_at_its_line() {
        let e = parse(
            "currency: yuan\nregions:\n  cn-hangzhou:\n    instance_typs:\n      ecs.g6.large: 1\n    disks_per_gb:\n      cloud_essd: cheap\n  Bad_Region: {}\n  cn-hangzou:\n    instance_types:\n      ecs.g6.large: -300\nextra: 1\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "prices.yaml:1:11: currency \"yuan\"",
            "prices.yaml:4:5: unknown key `instance_typs` (did you mean `instance_types`?)",
            "prices.yaml:7:19: cloud_essd: \"cheap\" is not an amount",
            "prices.yaml:8:3:",
            // Found trying a price file: the region's typo was taken, its prices never used,
            // and a negative price was "not an amount of at most 2 decimals".
            "prices.yaml:9:3: \"cn-hangzou\" is not an ECS region; did you mean cn-hangzhou?",
            "prices.yaml:12:1: unknown key",
        ] {
            assert!(e.contains(want), "{want:?} in:\n{e}");
        }
    }
}
