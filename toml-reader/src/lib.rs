//! Reads FreeAuth's TOML configuration files so that an administrator sees
//! every problem at once, each with file, line and column.
//!
//! A serde struct with `deny_unknown_fields` stops at the first unknown key or
//! wrong type. Instead, callers walk the spanned document with a [`Section`]:
//! each getter checks type and range and records a [`Problem`] on failure, and
//! [`Section::finish`] reports every key nobody asked for. The caller then
//! builds its validated types from what the getters returned and checks
//! cross-field rules, adding problems to the same [`Problems`] list.
//!
//! Relative paths resolve against the folder of the file they appear in, so
//! a copied configuration folder is an independent instance.

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Maximum size in bytes of a configuration file, far above any real one.
pub const MAX_CONFIG_LEN: u64 = 1024 * 1024;

/// Reads a configuration, key or secret file of at most `max` bytes as
/// UTF-8 text. Only a regular file is read: a named pipe would wait for a
/// writer forever, and a device such as /dev/zero would never end. The file
/// is opened without waiting, so a named pipe fails at once as well.
pub fn read_regular_file(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;

    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let too_large = || Error::new(ErrorKind::InvalidData, format!("larger than {max} bytes"));
    if meta.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|err| {
        let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        Error::new(ErrorKind::InvalidData, format!("line {line} is not valid UTF-8"))
    })
}

/// Returns a problem when the file at `path` is writable by every user, as
/// a user who can write a configuration controls the program that reads
/// it. Group write is left alone, as a user's private group may have it.
pub fn world_writable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o002 != 0).then(|| {
        format!(
            "{} is writable by every user (mode {mode:04o}), so anyone could change this configuration; \
             run chmod o-w on it",
            path.display()
        )
    })
}

/// One thing wrong in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(f, "invalid configuration {} ({count} {noun})", self.path.display())?;
        for problem in &self.problems {
            write!(
                f,
                "\n  {}:{}:{}: {}",
                self.path.display(),
                problem.line,
                problem.column,
                problem.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems for one file and turns byte offsets into line and column.
#[derive(Debug)]
pub struct Problems<'a> {
    text: &'a str,
    found: RefCell<Vec<Problem>>,
}

impl<'a> Problems<'a> {
    fn new(text: &'a str) -> Self {
        Problems {
            text,
            found: RefCell::new(Vec::new()),
        }
    }

    /// Records `message` at byte offset `span.start`.
    pub fn add(&self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_and_column(self.text, span.start);
        self.found.borrow_mut().push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    /// Records a problem that belongs to no single value (line 1, column 1).
    pub fn add_global(&self, message: impl Into<String>) {
        self.add(0..0, message);
    }

    /// Returns whether any problem was recorded so far.
    pub fn is_empty(&self) -> bool {
        self.found.borrow().is_empty()
    }

    fn into_error(self, path: &Path) -> Option<ConfigError> {
        let mut problems = self.found.into_inner();
        problems.sort_by_key(|problem| (problem.line, problem.column));
        if problems.is_empty() {
            return None;
        }
        Some(ConfigError {
            path: path.to_owned(),
            problems,
        })
    }
}

/// 1-based line and column (in characters) of byte offset `offset`.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = before.get(line_start..).map_or(0, |tail| tail.chars().count()) + 1;
    (line, column)
}

/// Rewords terse messages of the TOML parser (toml 1.x) for mistakes that
/// administrators make: a table or key written twice, and a word without
/// quotes. For `lock_seconds = 15m` the parser requests quotes although the
/// key takes a number, and for `log_level = info` it expects `inf`, because
/// it reads the first letter as the start of a float, boolean or string.
/// Other messages are kept.
fn explain_syntax_error(text: &str, span: Range<usize>, message: &str) -> String {
    let line_start = text
        .get(..span.start)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |at| at + 1);
    let line_end = text
        .get(span.start..)
        .and_then(|after| after.find('\n'))
        .map_or(text.len(), |at| span.start + at);
    let line = text.get(line_start..line_end).unwrap_or("").trim();
    let before = text.get(line_start..span.start).unwrap_or("").trim_start();
    if message == "duplicate key" {
        if before.starts_with('[') {
            let header = line.split(']').next().unwrap_or(line).trim_start_matches('[').trim();
            return format!(
                "table [{header}] is defined twice, by two [{header}] headers or by a header and a dotted key \
                 that starts with {header}.; put all its keys under one [{header}] header"
            );
        }
        let key = text.get(span).unwrap_or("").trim();
        return format!("`{key}` is set twice in the same table; keep one of the two lines");
    }
    let bare_word = [
        "string values must be quoted",
        "invalid boolean",
        "invalid float, expected `inf`",
        "invalid float, expected `nan`",
    ]
    .iter()
    .any(|start| message.starts_with(start));
    if bare_word {
        // The value is not repeated: it may be a secret written without
        // quotes, and the line and column locate it.
        return "invalid value: write numbers without a unit (the key name gives the unit, \
             as in _ms or _seconds), true and false in lower case, and text in double quotes"
            .to_owned();
    }
    message.to_owned()
}

/// A parsed file: its text, folder and problems.
pub struct Document<'a> {
    path: &'a Path,
    root: Spanned<DeTable<'a>>,
    problems: Problems<'a>,
}

impl<'a> Document<'a> {
    /// Parses `text`, read from `path`. Syntax errors are all reported.
    pub fn parse(path: &'a Path, text: &'a str) -> Result<Document<'a>, ConfigError> {
        let (root, errors) = DeTable::parse_recoverable(text);
        let problems = Problems::new(text);
        for error in &errors {
            let span = error.span().unwrap_or(0..0);
            let message = explain_syntax_error(text, span.clone(), error.message().trim_end());
            problems.add(span, message);
        }
        if let Some(error) = problems.into_error(path) {
            return Err(error);
        }
        Ok(Document {
            path,
            root,
            problems: Problems::new(text),
        })
    }

    /// The top-level table.
    pub fn root(&self) -> Section<'_, 'a> {
        Section::new(self, self.root.get_ref(), String::new(), self.root.span())
    }

    /// The problem list, for checks that span several values.
    pub fn problems(&self) -> &Problems<'a> {
        &self.problems
    }

    /// Ends the walk: `Ok` if nothing was recorded, else every problem.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.problems.into_error(self.path) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// A value with the place it came from, for problems found later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub span: Range<usize>,
}

/// One table of the document. Every getter marks its key as known.
pub struct Section<'d, 'a> {
    document: &'d Document<'a>,
    table: &'d DeTable<'a>,
    name: String,
    span: Range<usize>,
    read: RefCell<BTreeSet<String>>,
}

impl<'d, 'a> Section<'d, 'a> {
    fn new(document: &'d Document<'a>, table: &'d DeTable<'a>, name: String, span: Range<usize>) -> Self {
        Section {
            document,
            table,
            name,
            span,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    fn full_key(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    fn lookup(&self, key: &str) -> Option<&'d Spanned<DeValue<'a>>> {
        self.read.borrow_mut().insert(key.to_owned());
        self.table.get(key)
    }

    fn wrong_type(&self, key: &str, value: &Spanned<DeValue<'a>>, expected: &str) {
        self.document.problems.add(
            value.span(),
            format!(
                "`{}` must be {expected}, found {}",
                self.full_key(key),
                value.get_ref().type_str()
            ),
        );
    }

    /// Records a problem about `key`'s value.
    pub fn problem(&self, span: Range<usize>, key: &str, message: impl fmt::Display) {
        self.document
            .problems
            .add(span, format!("`{}` {message}", self.full_key(key)));
    }

    /// Returns the span of `key`'s value, or of the table when the key is absent.
    pub fn span_of(&self, key: &str) -> Range<usize> {
        self.table
            .get(key)
            .map_or_else(|| self.span.clone(), |value| value.span())
    }

    /// Records that `key` is required but missing. A key that is there
    /// with a value of the wrong type has had its own problem recorded.
    pub fn missing(&self, key: &str) {
        if self.table.get(key).is_some() {
            return;
        }
        self.document.problems.add(
            self.span.clone(),
            format!("missing required setting `{}`", self.full_key(key)),
        );
    }

    /// A sub-table; an absent one reads as empty so defaults apply.
    pub fn section(&self, key: &str) -> Option<Section<'d, 'a>> {
        let name = self.full_key(key);
        match self.lookup(key) {
            None => Some(Section::new(self.document, empty_table(), name, self.span.clone())),
            Some(value) => match value.get_ref() {
                DeValue::Table(table) => Some(Section::new(self.document, table, name, value.span())),
                _ => {
                    self.wrong_type(key, value, "a table");
                    None
                }
            },
        }
    }

    /// Every table of an array of tables (`[[key]]`); absent reads as none.
    pub fn tables(&self, key: &str) -> Vec<Section<'d, 'a>> {
        let Some(value) = self.lookup(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(key, value, "an array of tables ([[...]])");
            return Vec::new();
        };
        let mut sections = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(table) => {
                    let name = format!("{}[{index}]", self.full_key(key));
                    sections.push(Section::new(self.document, table, name, item.span()));
                }
                _ => self.wrong_type(key, item, "an array of tables ([[...]])"),
            }
        }
        sections
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Option<Located<String>> {
        let value = self.lookup(key)?;
        match value.get_ref() {
            DeValue::String(text) => Some(Located {
                value: text.to_string(),
                span: value.span(),
            }),
            _ => {
                self.wrong_type(key, value, "a string");
                None
            }
        }
    }

    /// A string, or `default` when the key is absent.
    pub fn string_or(&self, key: &str, default: &str) -> String {
        self.string(key)
            .map_or_else(|| default.to_owned(), |located| located.value)
    }

    /// One of `allowed`, or `default` when the key is absent. Any other
    /// value records a problem listing the allowed ones.
    pub fn choice_or(&self, key: &str, allowed: &[&str], default: &str) -> String {
        let Some(located) = self.string(key) else {
            return default.to_owned();
        };
        if !allowed.contains(&located.value.as_str()) {
            self.problem(located.span, key, format_args!("must be one of {}", allowed.join(", ")));
        }
        located.value
    }

    /// A path; relative paths resolve against the file's folder.
    pub fn path(&self, key: &str) -> Option<Located<PathBuf>> {
        let located = self.string(key)?;
        if located.value.is_empty() {
            self.problem(located.span, key, "must not be empty");
            return None;
        }
        if located.value.contains('\0') {
            self.problem(
                located.span,
                key,
                "must not contain a NUL character, which no path can have",
            );
            return None;
        }
        Some(Located {
            value: self.document.base_dir().join(&located.value),
            span: located.span,
        })
    }

    /// A path, or `default` (resolved the same way) when the key is absent.
    pub fn path_or(&self, key: &str, default: &str) -> PathBuf {
        match self.table.get(key) {
            Some(_) => self
                .path(key)
                .map_or_else(|| self.document.base_dir().join(default), |located| located.value),
            None => {
                self.read.borrow_mut().insert(key.to_owned());
                self.document.base_dir().join(default)
            }
        }
    }

    /// An integer within `range`, or `default` when the key is absent. A
    /// present but invalid value records a problem and yields `default`, so
    /// later checks still run; the caller fails on the recorded problem.
    pub fn integer_or(&self, key: &str, range: std::ops::RangeInclusive<i64>, default: i64) -> i64 {
        let Some(value) = self.lookup(key) else {
            return default;
        };
        let DeValue::Integer(integer) = value.get_ref() else {
            self.wrong_type(key, value, "an integer");
            return default;
        };
        let parsed = i64::from_str_radix(integer.as_str(), integer.radix()).ok();
        match parsed {
            Some(number) if range.contains(&number) => number,
            Some(number) => {
                self.problem(
                    value.span(),
                    key,
                    format_args!("is {number}; it must be between {} and {}", range.start(), range.end()),
                );
                default
            }
            None => {
                self.problem(
                    value.span(),
                    key,
                    format_args!(
                        "is too large for a 64-bit integer; it must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// A boolean, or `default` when the key is absent.
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        let Some(value) = self.lookup(key) else {
            return default;
        };
        match value.get_ref() {
            DeValue::Boolean(flag) => *flag,
            _ => {
                self.wrong_type(key, value, "true or false");
                default
            }
        }
    }

    /// An array of strings; absent reads as empty.
    pub fn strings(&self, key: &str) -> Vec<Located<String>> {
        let Some(value) = self.lookup(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(key, value, "an array of strings");
            return Vec::new();
        };
        let mut found = Vec::new();
        for item in items {
            match item.get_ref() {
                DeValue::String(text) => found.push(Located {
                    value: text.to_string(),
                    span: item.span(),
                }),
                _ => self.wrong_type(key, item, "an array of strings"),
            }
        }
        found
    }

    /// Reports every key of this table that no getter asked for.
    pub fn finish(&self) {
        let read = self.read.borrow();
        for (key, value) in self.table.iter() {
            if !read.contains(key.get_ref().as_ref()) {
                let known: Vec<&str> = read.iter().map(String::as_str).collect();
                let hint = if known.is_empty() {
                    String::new()
                } else {
                    format!(" (known keys here: {})", known.join(", "))
                };
                let span = if key.span().is_empty() {
                    value.span()
                } else {
                    key.span()
                };
                self.document.problems.add(
                    span,
                    format!("unknown setting `{}`{hint}", self.full_key(key.get_ref())),
                );
            }
        }
    }
}

fn empty_table() -> &'static DeTable<'static> {
    static EMPTY: std::sync::OnceLock<DeTable<'static>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(DeTable::new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(text: &str) -> Result<(i64, String, bool), ConfigError> {
        let path = Path::new("/etc/freeauth/test.toml");
        let document = Document::parse(path, text)?;
        let root = document.root();
        let limits = root.section("limits").unwrap();
        let count = limits.integer_or("count", 1..=10, 3);
        limits.finish();
        let name = root.string_or("name", "default");
        let flag = root.bool_or("flag", false);
        root.finish();
        document.finish()?;
        Ok((count, name, flag))
    }

    #[test]
    fn reads_values_and_defaults() {
        assert_eq!(
            check("name = \"x\"\n[limits]\ncount = 7\n").unwrap(),
            (7, "x".into(), false)
        );
        assert_eq!(check("").unwrap(), (3, "default".into(), false));
    }

    #[test]
    fn reports_every_problem_with_position() {
        let err = check("name = 5\nflag = \"yes\"\ntypo = 1\n[limits]\ncount = 99\n").unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
        assert_eq!(err.problems.len(), 4, "{err}");
        assert!(lines.contains(&1) && lines.contains(&2) && lines.contains(&3) && lines.contains(&5));
        let text = err.to_string();
        assert!(
            text.contains("/etc/freeauth/test.toml:3:1: unknown setting `typo`"),
            "{text}"
        );
        assert!(
            text.contains("test.toml:5:9: `limits.count` is 99; it must be between 1 and 10"),
            "{text}"
        );
    }

    #[test]
    fn reports_syntax_errors() {
        let err = check("name = \"unterminated\n").unwrap_err();
        assert_eq!(err.problems[0].line, 1);
    }

    #[test]
    fn explains_common_syntax_errors() {
        let cases = [
            (
                "[limits]\ncount = 1\n[limits]\ncount = 2\n",
                "test.toml:3:2: table [limits] is defined twice",
            ),
            (
                "limits.count = 1\n[limits]\n",
                "test.toml:2:2: table [limits] is defined twice",
            ),
            (
                "[limits]\ncount = 1\ncount = 2\n",
                "test.toml:3:1: `count` is set twice in the same table; keep one of the two lines",
            ),
            (
                "[limits]\ncount = 15m\n",
                "test.toml:2:9: invalid value: write numbers without a unit",
            ),
            ("name = debug # a comment\n", "test.toml:1:8: invalid value"),
            ("name = info\n", "test.toml:1:8: invalid value"),
            ("name = trace\n", "test.toml:1:8: invalid value"),
            ("name = Example Corp\n", "test.toml:1:8: invalid value"),
            ("flag = True\n", "true and false in lower case"),
            ("[limits]\ncount = 5 min\n", "test.toml:2:9: invalid value"),
            ("names = [freeauth-radius, x]\n", "test.toml:1:10: invalid value"),
        ];
        for (text, expected) in cases {
            let err = check(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    /// A secret written without quotes must not be repeated in the error,
    /// which goes to the journal.
    #[test]
    fn unquoted_value_is_not_repeated() {
        let err = check("secret = s3cretWord\n").unwrap_err().to_string();
        assert!(err.contains("invalid value"), "{err}");
        assert!(!err.contains("s3cretWord"), "{err}");
    }

    #[test]
    fn resolves_relative_paths_against_file_folder() {
        let path = Path::new("/srv/conf/agentd.toml");
        let document = Document::parse(path, "state = \"state\"\nabs = \"/var/x\"\n").unwrap();
        let root = document.root();
        assert_eq!(root.path("state").unwrap().value, Path::new("/srv/conf/state"));
        assert_eq!(root.path("abs").unwrap().value, Path::new("/var/x"));
        assert_eq!(root.path_or("other", "run/a.sock"), Path::new("/srv/conf/run/a.sock"));
    }

    #[test]
    fn path_with_nul_is_a_problem() {
        let document = Document::parse(Path::new("/x/a.toml"), "state = \"a\\u0000b\"\n").unwrap();
        assert!(document.root().path("state").is_none());
        let err = document.finish().err().unwrap().to_string();
        assert!(
            err.contains("a.toml:1:9: `state` must not contain a NUL character"),
            "{err}"
        );
    }

    #[test]
    fn computes_line_and_column() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("ab", 99), (1, 3));
    }
}
