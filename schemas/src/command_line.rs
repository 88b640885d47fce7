//! How a command line — a service's `dockerCommand`, its pre-deploy
//! command, a job's command — becomes a program and its arguments: split
//! into words as a POSIX shell splits them, with no expansion and no
//! operators, and run with no shell in between (as Docker's exec form
//! runs a command).
//!
//! Written as a shell line, a command means something else here:
//! `npm run migrate && npm start` runs `npm` with `&&` among its arguments,
//! `gunicorn -b 0.0.0.0:$PORT app:app` binds to a port named `$PORT`.
//! [`shell_syntax`] finds such a construct where a shell would have acted
//! on it, so the command can be refused with a way out (`sh -c '…'`)
//! before anything runs, rather than failing later in the program's own
//! words.

/// One character of a word and whether it was quoted (or escaped).
type Char = (char, bool);

/// The words of `line` with, for each character, whether a quote or a
/// backslash made it literal; `None` for an unbalanced quote or a trailing
/// backslash. Single quotes are literal; double quotes allow `\"`, `\\`,
/// `\$` and `` \` ``; a backslash outside quotes escapes the next
/// character; a backslash-newline joins lines.
fn scan(line: &str) -> Option<Vec<Vec<Char>>> {
    let mut words = Vec::new();
    let mut word: Vec<Char> = Vec::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push((c, true)),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push((c, true)),
                            '\n' => {}
                            c => {
                                word.push(('\\', true));
                                word.push((c, true));
                            }
                        },
                        c => word.push((c, true)),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next()? {
                    '\n' => {}
                    c => word.push((c, true)),
                }
            }
            c => {
                in_word = true;
                word.push((c, false));
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// The program and arguments `line` runs; `None` for an unbalanced quote
/// or a trailing backslash.
pub fn words(line: &str) -> Option<Vec<String>> {
    Some(
        scan(line)?
            .into_iter()
            .map(|w| w.into_iter().map(|(c, _)| c).collect())
            .collect(),
    )
}

/// Words a shell reads as operators when they stand alone, unquoted.
const OPERATORS: &[&str] = &["&&", "||", "|", "|&", ";", "&"];

/// The first construct in `line` that a shell would act on and that, run
/// without one, is passed to the program as it is written: an operator
/// (`&&`, `||`, `|`, `;`, `&`), a redirection (`>`, `2>&1`, `<`), a
/// variable or command substitution (`$PORT`, `${PORT}`, `$(…)`, a
/// backquote), a variable set for the command (`NODE_ENV=production
/// node app.js`). Quoted or escaped characters are literal to a shell too,
/// and are never reported: `sh -c 'a && b'` has nothing to report. `None`
/// also for a line [`words`] cannot read.
pub fn shell_syntax(line: &str) -> Option<String> {
    let words = scan(line)?;
    // An assignment before the program (`NODE_ENV=production node app.js`):
    // a shell's way to set a variable for one command.
    if let Some(first) = words.first() {
        let eq = first.iter().position(|(c, _)| *c == '=');
        let name = eq.map(|i| &first[..i]).unwrap_or_default();
        let is_name = name.iter().enumerate().all(|(i, (c, q))| {
            !q && (*c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
        });
        if !name.is_empty() && is_name && eq.is_some_and(|i| !first[i].1) {
            let name: String = name.iter().map(|(c, _)| c).collect();
            return Some(format!("{name}=…"));
        }
    }
    for word in words {
        let text: String = word.iter().map(|(c, _)| c).collect();
        let plain = word.iter().all(|(_, quoted)| !quoted);
        if plain && OPERATORS.contains(&text.as_str()) {
            return Some(text);
        }
        // A redirection: `>out`, `2>&1`, `<in`, `&>log` — digits, then an
        // unquoted `<` or `>` (or `&>`).
        let lead = word
            .iter()
            .position(|(c, _)| !c.is_ascii_digit())
            .unwrap_or(word.len());
        let redirect = match &word[lead..] {
            [('<' | '>', false), ..] => true,
            [('&', false), ('>', false), ..] => lead == 0,
            _ => false,
        };
        if redirect {
            return Some(text);
        }
        // A command ended by `;` (`migrate; serve`).
        if word.len() > 1 && word.last() == Some(&(';', false)) {
            return Some(";".to_owned());
        }
        for (i, (c, quoted)) in word.iter().enumerate() {
            if *quoted {
                continue;
            }
            match c {
                '`' => return Some("`".to_owned()),
                '$' => {
                    let rest: String = word[i + 1..].iter().map(|(c, _)| c).collect();
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if rest.starts_with('{') || rest.starts_with('(') {
                        let close = if rest.starts_with('{') { '}' } else { ')' };
                        let inner: String = rest.chars().take_while(|c| *c != close).collect();
                        return Some(format!("${inner}{close}"));
                    }
                    if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                        return Some(format!("${name}"));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn words_as_a_shell_splits_them_without_expanding() {
        let w = words(r#"sh -c "echo \"$X\" \n" 'it''s' a\ b "" x"y"z"#).unwrap();
        assert_eq!(w, ["sh", "-c", "echo \"$X\" \\n", "its", "a b", "", "xyz"]);
        assert_eq!(words("a 'b"), None);
        assert_eq!(words("a \"b"), None);
        assert_eq!(words("a\\"), None);
        assert_eq!(words("  "), Some(vec![]));
    }

    #[test]
    fn shell_constructs_are_found_where_a_shell_would_act_on_them() {
        for (line, found) in [
            ("npm run migrate && npm start", "&&"),
            ("./a || ./b", "||"),
            ("serve | tee log", "|"),
            ("migrate; serve", ";"),
            ("migrate ; serve", ";"),
            ("worker &", "&"),
            ("server > /var/log/out", ">"),
            ("server >>/var/log/out", ">>/var/log/out"),
            ("server 2>&1", "2>&1"),
            ("server &>log", "&>log"),
            ("import <data.sql", "<data.sql"),
            ("gunicorn -b 0.0.0.0:$PORT app:app", "$PORT"),
            ("gunicorn -b 0.0.0.0:${PORT} app:app", "${PORT}"),
            ("server --id $(hostname)", "$(hostname)"),
            ("server --id `hostname`", "`"),
            ("rails s -p $PORT_2", "$PORT_2"),
            ("NODE_ENV=production node server.js", "NODE_ENV=…"),
        ] {
            assert_eq!(shell_syntax(line).as_deref(), Some(found), "{line}");
        }
        for line in [
            "sh -c 'npm run migrate && npm start'",
            "sh -c \"exec gunicorn -b 0.0.0.0:$PORT app:app\"",
            "/bin/busybox httpd -f -p 10000 -h /app",
            "curl http://x/?a=1&b=2",
            "echo a\\&\\&b \\$HOME '$PORT' \"a;\"",
            "price 5$ 100%",
            "node --max-old-space-size=400 server.js",
            "python3 -c 'print(1)'",
            "echo a\\;",
            "echo \\>x",
            "test ! -f /done",
            "node --env=production server.js",
            "'A=b' run",
            "=x run",
            "1A=b run",
            "a 'b",
        ] {
            assert_eq!(shell_syntax(line), None, "{line}");
        }
    }
}
