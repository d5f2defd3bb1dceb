//! `${VAR}` and `${VAR:-default}` expansion in config text, done before parsing so any value can
//! use it (the Kubernetes downward API gives `${POD_IP}`, `${POD_NAME}`…).
//!
//! Expansion works line by line and never inserts a newline, so every line number serde_yaml
//! reports afterwards is still right. Comments (`#` at the start of a line or after whitespace,
//! outside quotes) are left alone; `$$` is a literal `$`. A variable that is unset and has no
//! default is an error naming its line and column: silently expanding it to "" would turn a
//! deployment mistake into a wrong address.

/// Why expansion failed and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column of the `$`.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Expands `text` using `lookup` to read variables.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, idx + 1, lookup, &mut out)?;
    }
    Ok(out)
}

fn expand_line(
    line: &str,
    line_no: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), ExpandError> {
    let err = |col: usize, message: String| ExpandError {
        line: line_no,
        column: col,
        message,
    };
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' if quote.is_none() && prev_space => {
                out.push_str(&line[i..]);
                return Ok(());
            }
            '\'' | '"' if quote.is_none() => quote = Some(c),
            q if quote == Some(q) => quote = None,
            '$' => match chars.peek() {
                Some((_, '$')) => {
                    chars.next();
                    out.push('$');
                    prev_space = false;
                    continue;
                }
                Some((_, '{')) => {
                    let start = i + 2;
                    let Some(len) = line[start..].find('}') else {
                        return Err(err(
                            i + 1,
                            "unterminated `${`: expected `${NAME}` or `${NAME:-default}`".into(),
                        ));
                    };
                    let inner = &line[start..start + len];
                    let (name, default) = match inner.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (inner, None),
                    };
                    let valid = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !name.as_bytes()[0].is_ascii_digit();
                    if !valid {
                        return Err(err(
                            i + 1,
                            format!("invalid variable name {name:?} in `${{{inner}}}`"),
                        ));
                    }
                    let value = match (lookup(name), default) {
                        // As in the shell, `:-` also replaces a variable that is set but empty.
                        (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                        (Some(v), _) => v,
                        (None, Some(d)) => d.to_string(),
                        (None, None) => {
                            return Err(err(
                                i + 1,
                                format!("environment variable {name} is not set and `${{{name}}}` has no default (write `${{{name}:-value}}`)"),
                            ))
                        }
                    };
                    if value.contains('\n') {
                        return Err(err(
                            i + 1,
                            format!("environment variable {name} contains a newline"),
                        ));
                    }
                    out.push_str(&value);
                    // Skip past the closing brace.
                    while let Some((j, _)) = chars.peek() {
                        if *j > start + len {
                            break;
                        }
                        chars.next();
                    }
                    prev_space = false;
                    continue;
                }
                _ => {}
            },
            _ => {}
        }
        prev_space = c.is_whitespace();
        out.push(c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("10.1.2.3".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_values_and_defaults() {
        let t = "a: ${POD_IP}:8080\nb: ${NOPE:-x}\nc: ${EMPTY:-d}\nd: $$HOME\n";
        assert_eq!(
            expand(t, &env).unwrap(),
            "a: 10.1.2.3:8080\nb: x\nc: d\nd: $HOME\n"
        );
        assert_eq!(
            expand("a: x${EMPTY}y\n", &env).unwrap(),
            "a: xy\n",
            "set but empty, no default"
        );
    }

    #[test]
    fn leaves_comments_alone() {
        let t = "a: 1 # see ${UNSET}\n# ${UNSET}\nb: 'x#${POD_IP}'\n";
        assert_eq!(
            expand(t, &env).unwrap(),
            "a: 1 # see ${UNSET}\n# ${UNSET}\nb: 'x#10.1.2.3'\n"
        );
    }

    #[test]
    fn unset_without_default_names_position() {
        let e = expand("a: 1\nb: x${UNSET}\n", &env).unwrap_err();
        assert_eq!((e.line, e.column), (2, 5));
        assert!(e.message.contains("UNSET"), "{}", e.message);
        assert!(expand("a: ${", &env).is_err());
        assert!(expand("a: ${1X}", &env).is_err());
    }
}
