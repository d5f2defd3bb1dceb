//! Finds where a dotted key path (`services.echo.listen`, `a.b.0.c` for list items) sits in
//! block-style YAML text, so errors from cross-key validation can name a line and column the way
//! serde_yaml's own errors do.
//!
//! It follows indentation only — enough for block-style config files, which is what waypost's
//! configs are. When a path is written in flow style (`{a: 1}`) it returns the position of the
//! deepest key it could find, which still points the user at the right block.

/// 1-based (line, column) of the key at `path` in `text`, or of its deepest located ancestor.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut best = None;
    // The block being searched: lines from `from`, entries at one indentation >= `min_indent`.
    let mut from = 0usize;
    let mut min_indent = 0usize;
    let mut block_indent: Option<usize> = None;
    // After a list item `- key: v`, its first key sits on the item's own line: (line, column).
    let mut inline: Option<(usize, usize)> = None;
    for part in parts {
        let index: Option<usize> = part.parse().ok();
        if let Some((n, col)) = inline.take() {
            if index.is_none() && key_of(&lines[n][col..]) == Some(part) {
                best = Some((n + 1, col + 1));
                from = n + 1;
                min_indent = col + 1;
                block_indent = None;
                continue;
            }
        }
        let mut found = None;
        let mut seen_items = 0usize;
        for (n, raw) in lines.iter().enumerate().skip(from) {
            let content = raw.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let indent = raw.len() - content.len();
            if indent < min_indent || block_indent.is_some_and(|b| indent < b) {
                break;
            }
            let level = *block_indent.get_or_insert(indent);
            if indent != level {
                continue;
            }
            match index {
                Some(want) if content.starts_with('-') => {
                    if seen_items == want {
                        let after = content[1..].trim_start();
                        found = Some((n, indent + (content.len() - after.len()), true));
                        break;
                    }
                    seen_items += 1;
                }
                _ => {
                    if key_of(content) == Some(part) {
                        found = Some((n, indent, false));
                        break;
                    }
                }
            }
        }
        let Some((line, col, item)) = found else {
            break;
        };
        best = Some((line + 1, col + 1));
        from = line + 1;
        if item {
            // The item's other keys are aligned with its first one.
            inline = Some((line, col));
            min_indent = col;
            block_indent = Some(col);
        } else {
            min_indent = col + 1;
            block_indent = None;
        }
    }
    best
}

/// The key of a `key: value` line, unquoted; `None` when the line is not a mapping entry.
fn key_of(content: &str) -> Option<&str> {
    let (key, _) = content.split_once(':')?;
    Some(key.trim().trim_matches(|c| c == '"' || c == '\''))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
listen: 127.0.0.1:1
services:
  # comment
  echo:
    listen: 127.0.0.1:2
    resolver:
      static:
        instances:
          - address: 127.0.0.1:3
            weight: 3
          - address: 127.0.0.1:4
            weight: 9
  other:
    listen: 127.0.0.1:5
";

    #[test]
    fn finds_nested_keys() {
        assert_eq!(locate(TEXT, "listen"), Some((1, 1)));
        assert_eq!(locate(TEXT, "services.echo.listen"), Some((5, 5)));
        assert_eq!(locate(TEXT, "services.other.listen"), Some((14, 5)));
        assert_eq!(
            locate(TEXT, "services.echo.resolver.static.instances.1.weight"),
            Some((12, 13))
        );
        assert_eq!(
            locate(TEXT, "services.echo.resolver.static.instances.0.address"),
            Some((9, 13))
        );
    }

    #[test]
    fn falls_back_to_deepest_ancestor() {
        assert_eq!(locate(TEXT, "services.echo.nope"), Some((4, 3)));
        assert_eq!(locate(TEXT, "nope"), None);
    }
}
