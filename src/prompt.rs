//! Text prompts built from attributes, in the order of the medical VLSM benchmark's prompt
//! types: P0 (empty) to P9. Each level adds one attribute to the one before it:
//!
//! | type | words |
//! |------|-------|
//! | P0 | *(empty)* |
//! | P1 | class |
//! | P2 | shape + class |
//! | P3 | colour + P2 |
//! | P4 | size + P3 |
//! | P5 | count + P4 |
//! | P6 | P5 + ", located in " location |
//! | P7 | class + ", " definition |
//! | P8 | P5 + ", " definition |
//! | P9 | P8 + ", located in " location |
//!
//! An attribute that is not given is left out, so `P4` of `class=polyp,size=small` is
//! `small polyp`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Errors parsing attributes or prompt types, or building a prompt.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum PromptError {
    #[error(
        "unknown attribute `{0}` (known: class, shape, color, size, count, location, definition)"
    )]
    UnknownAttribute(String),
    #[error("attribute `{0}` has no `=value`")]
    MissingValue(String),
    #[error("unterminated quote in attributes `{0}`")]
    UnterminatedQuote(String),
    #[error("unknown prompt type `{0}` (expected P0 to P9)")]
    UnknownType(String),
    #[error("prompt type {0} needs the `class` attribute")]
    MissingClass(PromptType),
}

/// Attributes describing the structure to segment.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

/// A prompt level of the VLSM benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PromptType(u8);

impl PromptType {
    /// All levels, P0 to P9.
    pub fn all() -> impl Iterator<Item = PromptType> {
        (0..=9).map(PromptType)
    }

    pub fn level(self) -> u8 {
        self.0
    }
}

impl fmt::Display for PromptType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.0)
    }
}

impl FromStr for PromptType {
    type Err = PromptError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix(['P', 'p']).unwrap_or("");
        match digits.parse::<u8>() {
            Ok(n) if n <= 9 && digits.len() == 1 => Ok(PromptType(n)),
            _ => Err(PromptError::UnknownType(s.to_string())),
        }
    }
}

impl FromStr for Attributes {
    type Err = PromptError;

    /// Parses `key=value,key=value`; a value may be quoted to hold commas or spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut attrs = Attributes::default();
        for item in split_unquoted(s)? {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| PromptError::MissingValue(item.to_string()))?;
            let value = value.trim().trim_matches('"').trim().to_string();
            let slot = match key.trim() {
                "class" => &mut attrs.class,
                "shape" => &mut attrs.shape,
                "color" | "colour" => &mut attrs.color,
                "size" => &mut attrs.size,
                "count" => &mut attrs.count,
                "location" => &mut attrs.location,
                "definition" => &mut attrs.definition,
                other => return Err(PromptError::UnknownAttribute(other.to_string())),
            };
            *slot = Some(value).filter(|v| !v.is_empty());
        }
        Ok(attrs)
    }
}

/// Splits on commas that are not inside double quotes.
fn split_unquoted(s: &str) -> Result<Vec<&str>, PromptError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(PromptError::UnterminatedQuote(s.to_string()));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

impl Attributes {
    /// The prompt of the given type; every type but P0 needs a class.
    pub fn prompt(&self, kind: PromptType) -> Result<String, PromptError> {
        if kind.0 == 0 {
            return Ok(String::new());
        }
        let class = self
            .class
            .as_deref()
            .ok_or(PromptError::MissingClass(kind))?;
        let words = |upto: u8| -> String {
            // Adjectives in the order count, size, colour, shape, then the class.
            let ordered = [
                (5, &self.count),
                (4, &self.size),
                (3, &self.color),
                (2, &self.shape),
            ];
            let mut out: Vec<&str> = ordered
                .iter()
                .filter(|(level, _)| *level <= upto)
                .filter_map(|(_, v)| v.as_deref())
                .collect();
            out.push(class);
            out.join(" ")
        };
        let with = |base: String, sep: &str, extra: &Option<String>| match extra {
            Some(e) => format!("{base}{sep}{e}"),
            None => base,
        };
        let located = ", located in ";
        Ok(match kind.0 {
            1..=5 => words(kind.0),
            6 => with(words(5), located, &self.location),
            7 => with(class.to_string(), ", ", &self.definition),
            8 => with(words(5), ", ", &self.definition),
            _ => with(
                with(words(5), ", ", &self.definition),
                located,
                &self.location,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polyp() -> Attributes {
        "class=polyp,shape=round,color=pink,size=small,count=one,location=\"left of the image\",definition=\"a growth of tissue, raised from the mucosa\""
            .parse()
            .unwrap()
    }

    #[test]
    fn every_level_in_benchmark_order() {
        let a = polyp();
        let expected = [
            "",
            "polyp",
            "round polyp",
            "pink round polyp",
            "small pink round polyp",
            "one small pink round polyp",
            "one small pink round polyp, located in left of the image",
            "polyp, a growth of tissue, raised from the mucosa",
            "one small pink round polyp, a growth of tissue, raised from the mucosa",
            "one small pink round polyp, a growth of tissue, raised from the mucosa, located in left of the image",
        ];
        for (kind, want) in PromptType::all().zip(expected) {
            assert_eq!(a.prompt(kind).unwrap(), want, "{kind}");
        }
    }

    #[test]
    fn missing_attributes_are_left_out() {
        let a: Attributes = "class=lesion,size=large".parse().unwrap();
        assert_eq!(a.prompt("P5".parse().unwrap()).unwrap(), "large lesion");
        assert_eq!(a.prompt("P9".parse().unwrap()).unwrap(), "large lesion");
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            "klass=polyp".parse::<Attributes>(),
            Err(PromptError::UnknownAttribute("klass".into()))
        );
        assert_eq!(
            "class".parse::<Attributes>(),
            Err(PromptError::MissingValue("class".into()))
        );
        assert!(matches!(
            "location=\"left".parse::<Attributes>(),
            Err(PromptError::UnterminatedQuote(_))
        ));
        assert_eq!(
            "P10".parse::<PromptType>(),
            Err(PromptError::UnknownType("P10".into()))
        );
        let no_class: Attributes = "shape=round".parse().unwrap();
        assert!(matches!(
            no_class.prompt(PromptType(2)),
            Err(PromptError::MissingClass(_))
        ));
    }
}
