//! Value masking for result rows: whole columns by name (and the names they leave under),
//! plus the detectors ([`crate::detect`]) that find sensitive fragments in any text.

use serde::Serialize;

pub use crate::detect::Detector;
use crate::detect::{DetectorCounts, Detectors};
use crate::protocol::postgres::rules::SqlRule;
use crate::rules::Glob;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskReason {
    /// The column name matched a mask rule; the whole value was replaced.
    Column,
    /// Detectors found fragments inside the value.
    Detected(DetectorCounts),
}

pub const COLUMN_REDACTION: &str = "[redacted]";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Masker {
    columns: Vec<Glob>,
    /// Output names that carry a masked column under an alias (exact, as the server reports
    /// them in RowDescription).
    names: Vec<String>,
    detectors: Detectors,
}

impl Masker {
    /// Unions the columns and detectors of every matching mask rule: a value
    /// is masked if any rule that applies to the statement wants it masked.
    pub fn from_rules(rules: &[&SqlRule]) -> Masker {
        Masker::new(
            rules
                .iter()
                .flat_map(|r| r.columns.iter().cloned())
                .collect(),
            rules
                .iter()
                .flat_map(|r| r.detectors.iter().copied())
                .collect(),
        )
    }

    pub fn new(columns: Vec<Glob>, detectors: Vec<Detector>) -> Masker {
        Masker {
            columns,
            names: Vec::new(),
            detectors: Detectors::new(detectors),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.detectors.is_empty()
    }

    /// Whether whole columns are masked (by name), not only fragments found by detectors.
    pub fn has_columns(&self) -> bool {
        !self.columns.is_empty()
    }

    /// Output names under which a masked column leaves (`SELECT ssn AS x`).
    pub fn add_names(&mut self, names: impl IntoIterator<Item = String>) {
        self.names.extend(names);
    }

    pub fn masks_column(&self, column: &str) -> bool {
        self.columns.iter().any(|g| g.matches(column)) || self.names.iter().any(|n| n == column)
    }

    /// Masks the detectors' findings in any text the agent can receive (error and notice
    /// fields, parameter values, notification payloads), bytes that are not UTF-8 included.
    pub fn mask_any(&self, value: &[u8]) -> Option<String> {
        self.detectors.mask_bytes(value)
    }

    pub fn mask_text(&self, column: &str, value: &str) -> Option<(String, MaskReason)> {
        if self.masks_column(column) {
            return Some((COLUMN_REDACTION.to_string(), MaskReason::Column));
        }
        self.detectors
            .mask(value)
            .map(|(out, counts)| (out, MaskReason::Detected(counts)))
    }
}

#[cfg(test)]
mod tests;
