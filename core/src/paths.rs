//! File names inside a dataset.
//!
//! A dataset is a collection of `(name, hash)` pairs. Names are relative paths with `/` as the
//! separator. Both sides enforce the same rule: the publisher never produces a name that the
//! rule rejects, and a fetcher refuses a collection with any such name before it writes anything,
//! so a hostile provider cannot make a fetcher write outside its output directory.

use std::path::{Path, PathBuf};

/// Why a file name inside a dataset was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsafeName {
    #[error("empty file name")]
    Empty,
    #[error("file name {0:?} is an absolute path")]
    Absolute(String),
    #[error("file name {0:?} contains a `..` component")]
    ParentDir(String),
    #[error("file name {0:?} contains an empty or `.` component")]
    EmptyComponent(String),
    #[error("file name {0:?} contains a backslash, a NUL or a control character")]
    BadCharacter(String),
    #[error("file name {0:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
}

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 4096;

/// Checks that `name` is a safe relative path and returns its components.
pub fn check_name(name: &str) -> Result<Vec<&str>, UnsafeName> {
    if name.is_empty() {
        return Err(UnsafeName::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(UnsafeName::TooLong(name.chars().take(64).collect()));
    }
    if name.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(UnsafeName::BadCharacter(name.to_string()));
    }
    // `C:foo` is relative on unix but absolute-ish on windows; refuse drive prefixes everywhere.
    let drive = name.len() >= 2 && name.as_bytes()[1] == b':' && name.as_bytes()[0].is_ascii_alphabetic();
    if name.starts_with('/') || drive {
        return Err(UnsafeName::Absolute(name.to_string()));
    }
    let parts: Vec<&str> = name.split('/').collect();
    for part in &parts {
        match *part {
            ".." => return Err(UnsafeName::ParentDir(name.to_string())),
            "" | "." => return Err(UnsafeName::EmptyComponent(name.to_string())),
            _ => {}
        }
    }
    Ok(parts)
}

/// Joins a checked dataset file name onto `dir`.
pub fn join_checked(dir: &Path, name: &str) -> Result<PathBuf, UnsafeName> {
    let mut out = dir.to_path_buf();
    for part in check_name(name)? {
        out.push(part);
    }
    Ok(out)
}

/// Turns a path relative to a published folder into a dataset file name (`/`-separated).
pub fn name_from_relative(rel: &Path) -> Result<String, UnsafeName> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(s) => match s.to_str() {
                Some(s) => parts.push(s.to_string()),
                None => return Err(UnsafeName::BadCharacter(rel.to_string_lossy().into_owned())),
            },
            _ => return Err(UnsafeName::ParentDir(rel.to_string_lossy().into_owned())),
        }
    }
    let name = parts.join("/");
    check_name(&name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nested_relative_names() {
        assert_eq!(check_name("a/b.parquet").unwrap(), vec!["a", "b.parquet"]);
        assert_eq!(join_checked(Path::new("/out"), "x/y.csv").unwrap(), PathBuf::from("/out/x/y.csv"));
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(check_name("../x"), Err(UnsafeName::ParentDir(_))));
        assert!(matches!(check_name("a/../../x"), Err(UnsafeName::ParentDir(_))));
        assert!(matches!(check_name("/etc/passwd"), Err(UnsafeName::Absolute(_))));
        assert!(matches!(check_name("C:evil"), Err(UnsafeName::Absolute(_))));
        assert!(matches!(check_name("a\\..\\x"), Err(UnsafeName::BadCharacter(_))));
        assert!(matches!(check_name("a//b"), Err(UnsafeName::EmptyComponent(_))));
        assert!(matches!(check_name("./a"), Err(UnsafeName::EmptyComponent(_))));
        assert!(matches!(check_name("a\0b"), Err(UnsafeName::BadCharacter(_))));
        assert_eq!(check_name(""), Err(UnsafeName::Empty));
    }

    #[test]
    fn relative_paths_become_slash_names() {
        assert_eq!(name_from_relative(Path::new("a/b/c.csv")).unwrap(), "a/b/c.csv");
        assert!(name_from_relative(Path::new("../c.csv")).is_err());
    }
}
