//! The scenario file exactly as written: strict serde structs.
//!
//! Every struct denies unknown fields, so a misspelt key is an error with its
//! line, column and path (from `serde_yaml`), never a setting silently left at
//! its default. Values whose syntax this crate checks itself (durations,
//! frequencies, bounded numbers) are kept as [`RawScalar`] text so the
//! validator can say precisely what is wrong with them; keyword fields are
//! enums, whose errors list the accepted words.
//!
//! The meaning of every field is documented on the validated types in
//! [`super`] and in the example files under `scenarios/`.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// Any YAML scalar (text, number or boolean), kept as the text the validator parses.
#[derive(Clone, Debug, PartialEq)]
pub struct RawScalar {
    pub text: String,
    /// Whether YAML typed it as a number (`2` rather than `"2"`).
    pub is_number: bool,
}

impl RawScalar {
    /// The value as it appears in error messages: text quoted, numbers bare.
    pub fn shown(&self) -> String {
        if self.is_number {
            self.text.clone()
        } else {
            format!("{:?}", self.text)
        }
    }
}

impl<'de> Deserialize<'de> for RawScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = RawScalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a single value (a number, or text such as \"2s\" or \"1500MHz\")")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawScalar, E> {
                Ok(RawScalar { text: v.to_string(), is_number: false })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawScalar, E> {
                Ok(RawScalar { text: v.to_string(), is_number: true })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawScalar, E> {
                Ok(RawScalar { text: v.to_string(), is_number: true })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawScalar, E> {
                // Debug keeps `1.0` and `1e30` as written-ish; Display would give `1` and 31 digits.
                Ok(RawScalar { text: format!("{v:?}"), is_number: true })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawScalar, E> {
                Ok(RawScalar { text: v.to_string(), is_number: false })
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// One string or a list of strings (`exec_prefix: qemu-aarch64-static` or `[qemu-aarch64-static, -L, /x]`).
#[derive(Clone, Debug, PartialEq)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
                Ok(StringList(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(StringList(out))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// CPUs as a Linux cpulist string (`"4-7"`, `"0,2-3"`), one number, or a list of numbers.
#[derive(Clone, Debug, PartialEq)]
pub enum RawCpus {
    Text(String),
    List(Vec<u64>),
}

impl<'de> Deserialize<'de> for RawCpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CpusVisitor;
        impl<'de> Visitor<'de> for CpusVisitor {
            type Value = RawCpus;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a CPU list such as \"4-7\" or [4, 5, 6, 7]")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawCpus, E> {
                Ok(RawCpus::List(vec![v]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawCpus, E> {
                Err(E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCpus, E> {
                Ok(RawCpus::Text(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCpus, A::Error> {
                let mut out = Vec::new();
                while let Some(cpu) = seq.next_element::<u64>()? {
                    out.push(cpu);
                }
                Ok(RawCpus::List(out))
            }
        }
        deserializer.deserialize_any(CpusVisitor)
    }
}

/// `levels: all` or a list of frequencies.
#[derive(Clone, Debug, PartialEq)]
pub enum RawLevels {
    /// Any single scalar; only `all` is accepted by the validator.
    Word(RawScalar),
    List(Vec<RawScalar>),
}

impl<'de> Deserialize<'de> for RawLevels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LevelsVisitor;
        impl<'de> Visitor<'de> for LevelsVisitor {
            type Value = RawLevels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`all` or a list of frequencies such as [600MHz, 1GHz, 1.5GHz]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawLevels, E> {
                Ok(RawLevels::Word(RawScalar { text: v.to_string(), is_number: false }))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawLevels, E> {
                Ok(RawLevels::Word(RawScalar { text: v.to_string(), is_number: true }))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawLevels, E> {
                Ok(RawLevels::Word(RawScalar { text: v.to_string(), is_number: true }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawLevels, E> {
                Ok(RawLevels::Word(RawScalar { text: format!("{v:?}"), is_number: true }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawLevels, A::Error> {
                let mut out = Vec::new();
                while let Some(level) = seq.next_element::<RawScalar>()? {
                    out.push(level);
                }
                Ok(RawLevels::List(out))
            }
        }
        deserializer.deserialize_any(LevelsVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub name: Option<String>,
    pub description: Option<String>,
    pub boards: Vec<RawBoard>,
    pub model: RawModel,
    pub variants: Vec<RawVariant>,
    pub dvfs: RawDvfs,
    pub measure: Option<RawMeasure>,
    pub constraints: Option<RawConstraints>,
    pub policy: Option<RawPolicy>,
    pub regression: Option<RawRegression>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawTransport {
    Ssh,
    Local,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum RawHostKeyChecking {
    #[serde(rename = "strict")]
    Strict,
    #[serde(rename = "accept-new")]
    AcceptNew,
    #[serde(rename = "off")]
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoard {
    pub name: String,
    pub sim: Option<bool>,
    pub transport: Option<RawTransport>,
    pub host: Option<String>,
    pub port: Option<RawScalar>,
    pub user: Option<String>,
    pub identity: Option<String>,
    pub known_hosts: Option<String>,
    pub host_key_checking: Option<RawHostKeyChecking>,
    pub connect_timeout: Option<RawScalar>,
    pub command_timeout: Option<RawScalar>,
    pub keepalive: Option<RawScalar>,
    pub exec_prefix: Option<StringList>,
    pub sudo: Option<bool>,
    pub target: Option<String>,
    pub workdir: Option<String>,
    pub cpus: Option<RawCpus>,
    pub cpufreq_policies: Option<StringList>,
    pub sysfs_root: Option<String>,
    pub thermal_zone: Option<String>,
    pub monitor: Option<RawMonitor>,
    pub battery: Option<RawBattery>,
    pub labgrid: Option<RawLabgrid>,
}

/// `boards[].labgrid`: the board (or `count` boards) come from a labgrid coordinator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLabgrid {
    pub place: Option<String>,
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    pub count: Option<RawScalar>,
    pub coordinator: Option<String>,
    pub busy: Option<RawBusy>,
    pub wait_timeout: Option<RawScalar>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawBusy {
    Wait,
    Refuse,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawMonitorKind {
    Ppk2,
    Ina,
    Scpi,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawPpk2Mode {
    Source,
    Ampere,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawInaFormat {
    Auto,
    Csv,
    Tsv,
    KeyValue,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawTermination {
    Lf,
    Crlf,
    Cr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    pub kind: RawMonitorKind,
    pub port: Option<String>,
    pub baud: Option<RawScalar>,
    // ppk2
    pub mode: Option<RawPpk2Mode>,
    pub source_voltage_mv: Option<RawScalar>,
    pub rail_voltage_mv: Option<RawScalar>,
    // ina
    pub format: Option<RawInaFormat>,
    pub columns: Option<RawInaColumnsSpec>,
    // scpi
    pub current_query: Option<String>,
    pub voltage_query: Option<String>,
    pub termination: Option<RawTermination>,
    pub poll_interval: Option<RawScalar>,
    pub reply_timeout: Option<RawScalar>,
}

/// `columns:` of an INA monitor: a map naming the header fields that hold each quantity, or, for a
/// sketch that prints no header, the list of its fields in order (header syntax, `-` skips a field).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawInaColumnsSpec {
    // The list first: serde would also read a sequence into the struct's fields in order.
    Layout(Vec<String>),
    Named(RawInaColumns),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInaColumns {
    pub time: Option<String>,
    pub current: Option<String>,
    pub voltage: Option<String>,
    pub power: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBattery {
    pub capacity_mah: Option<RawScalar>,
    pub nominal_voltage_v: Option<RawScalar>,
    pub capacity_wh: Option<RawScalar>,
    pub peukert_exponent: Option<RawScalar>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum RawPreset {
    #[serde(rename = "distilbert")]
    Distilbert,
    #[serde(rename = "minilm")]
    Minilm,
    #[serde(rename = "rt3-transformer")]
    Rt3Transformer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub preset: Option<RawPreset>,
    pub safetensors: Option<String>,
    pub seq: Option<RawScalar>,
    pub seed: Option<RawScalar>,
    pub lm_head: Option<bool>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawVariantKind {
    Dense,
    Block,
    Pattern,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawPatternMethod {
    Rt3TileSums,
    FrequentTopK,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: String,
    pub kind: RawVariantKind,
    pub sparsity: Option<RawScalar>,
    pub block_rows: Option<RawScalar>,
    pub block_cols: Option<RawScalar>,
    pub base: Option<String>,
    pub tile: Option<RawScalar>,
    pub patterns: Option<RawScalar>,
    pub global: Option<bool>,
    pub method: Option<RawPatternMethod>,
    pub seed: Option<RawScalar>,
    pub accuracy: Option<RawScalar>,
    pub min_fidelity: Option<RawScalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDvfs {
    pub levels: RawLevels,
    pub governor: Option<String>,
    pub settle: Option<RawScalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeasure {
    pub warmup_iterations: Option<RawScalar>,
    pub min_iterations: Option<RawScalar>,
    pub min_duration: Option<RawScalar>,
    pub repeats: Option<RawScalar>,
    pub idle_duration: Option<RawScalar>,
    pub cooldown_temp_c: Option<RawScalar>,
    pub cooldown_timeout: Option<RawScalar>,
    pub max_attempts: Option<RawScalar>,
    pub raw_power: Option<bool>,
    pub max_lost_fraction: Option<RawScalar>,
    pub threads: Option<RawScalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConstraints {
    pub latency_deadline: Option<RawScalar>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawWorkload {
    BackToBack,
    Periodic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub battery_shares: Option<Vec<RawScalar>>,
    pub workload: Option<RawWorkload>,
    pub period: Option<RawScalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegression {
    pub baseline: Option<String>,
    pub threshold_pct: Option<RawScalar>,
    pub alpha: Option<RawScalar>,
}
