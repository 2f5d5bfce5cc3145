//! The docs (README.md and every docs/*.md) against what they describe:
//!
//! 1. **Links.** Every relative markdown link `[text](path)` or
//!    `[text](path#anchor)` outside code points at a file or directory that
//!    exists (relative to the page); an anchor into a `.md` file (or `#anchor`
//!    alone, into the page itself) must be the GitHub slug of one of its
//!    headings. http(s) and mailto links are not followed.
//! 2. **Commands.** Every `remote-vm-daemon SUB … --flag` in a code span or a
//!    code block (and a span that starts with a daemon subcommand, such as
//!    `check --format json`) names a subcommand and long flags that
//!    `remote-vm-daemon SUB --help` lists. Every `cargo xtask SUB … --flag`
//!    names a subcommand and long flags that xtask's clap definitions declare
//!    (see `xtask_cli`); after `cargo xtask run --` the flags are the daemon's
//!    `run` flags.
//! 3. **Config keys.** Every `[section] key` in a code span or block, and every
//!    `section.key` anywhere, where `section` is a table of the config, is a
//!    key that `remote-vm-daemon defaults` prints (or names as the old name of
//!    one in its comments: those still parse).
//!
//! A failure lists every problem as `page:line: what`; fix the page, not the
//! check.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_remote-vm-daemon");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// README.md and docs/*.md, relative to the workspace root.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    assert!(docs.len() >= 5, "docs/ has only {docs:?}");
    pages.extend(docs);
    pages
}

// ---------------------------------------------------------------- markdown

/// A page split into what the checks read, each piece with its 1-based line.
#[derive(Default)]
struct Page {
    /// Lines inside fenced code blocks.
    block_lines: Vec<(usize, String)>,
    /// Each fenced code block's lines (for commands that continue on indented lines).
    blocks: Vec<Vec<(usize, String)>>,
    /// Inline code spans (line breaks inside a span read as spaces).
    spans: Vec<(usize, String)>,
    /// The text outside code: fenced blocks and spans blanked, line breaks kept.
    prose: String,
    /// The headings' texts (outside code), in order.
    headings: Vec<String>,
    /// The whole text.
    text: String,
}

fn is_fence(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("```") || t.starts_with("~~~")
}

fn parse(text: &str) -> Page {
    let mut page = Page { text: text.to_string(), ..Page::default() };
    // Fenced blocks first; what is outside them is kept with its line breaks.
    let mut outside = String::new();
    let mut block: Option<Vec<(usize, String)>> = None;
    for (i, line) in text.lines().enumerate() {
        if is_fence(line) {
            match block.take() {
                Some(b) => page.blocks.push(b),
                None => block = Some(Vec::new()),
            }
            outside.push('\n');
            continue;
        }
        match block.as_mut() {
            Some(b) => {
                b.push((i + 1, line.to_string()));
                page.block_lines.push((i + 1, line.to_string()));
                outside.push('\n');
            }
            None => {
                outside.push_str(line);
                outside.push('\n');
            }
        }
    }
    // Code spans: a run of N backticks up to the next run of exactly N.
    let chars: Vec<char> = outside.chars().collect();
    let mut prose = String::with_capacity(outside.len());
    let mut line = 1;
    let mut i = 0;
    let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
    while i < chars.len() {
        if chars[i] != '`' {
            if chars[i] == '\n' {
                line += 1;
            }
            prose.push(chars[i]);
            i += 1;
            continue;
        }
        let n = run_at(i);
        let mut j = i + n;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let m = run_at(j);
                if m == n {
                    close = Some(j);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                let content: String = chars[i + n..j].iter().collect();
                page.spans.push((line, content.replace('\n', " ").trim().to_string()));
                for c in &chars[i..j + n] {
                    if *c == '\n' {
                        line += 1;
                        prose.push('\n');
                    } else {
                        prose.push(' ');
                    }
                }
                i = j + n;
            }
            None => {
                // No closing run: literal backticks.
                for _ in 0..n {
                    prose.push('`');
                }
                i += n;
            }
        }
    }
    page.prose = prose;
    // Headings: ATX lines outside fenced blocks (their code spans still in them).
    let mut in_block = false;
    for l in text.lines() {
        if is_fence(l) {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        let hashes = l.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && l[hashes..].starts_with(' ') {
            let t = l[hashes..].trim().trim_end_matches('#').trim();
            page.headings.push(t.to_string());
        }
    }
    page
}

/// The anchor GitHub gives a heading: its rendered text (links as their text,
/// no code or emphasis marks) lowercased, every character but letters, digits,
/// spaces, `-` and `_` dropped, each space a `-`.
fn slug(heading: &str) -> String {
    // Links to their text: `[text](url)` → `text`.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| after[close + 2..].find(')').map(|end| (close, close + 2 + end))) {
            Some((close, end)) => {
                text.push_str(&rest[..open]);
                text.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                text.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor of a page: each heading's slug, repeated ones numbered `-1`, `-2`….
fn anchors(page: &Page) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for h in &page.headings {
        let s = slug(h);
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 { s.clone() } else { format!("{s}-{n}") });
        *n += 1;
    }
    out
}

/// `(line, target)` of every inline link or image in the prose.
fn links(page: &Page) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in page.prose.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            // The target ends at the `)` that closes it (one level of parentheses).
            let mut depth = 0;
            let mut end = None;
            for (k, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = Some(k);
                        break;
                    }
                    ')' => depth -= 1,
                    _ => {}
                }
            }
            let Some(end) = end else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("").trim_matches(|c| c == '<' || c == '>');
            out.push((n + 1, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

// ---------------------------------------------------------------- the commands

fn help(args: &[&str]) -> String {
    let out = Command::new(DAEMON).args(args).env("COLUMNS", "100").output().unwrap();
    assert!(out.status.success(), "{DAEMON} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `flag` (`--name`) stands in `help` as a whole flag.
fn lists_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let before = help[..at].chars().next_back();
        let after = help[at + flag.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '.' || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '.' || c == '_')
    })
}

/// The daemon's subcommands, each with its `--help` text ("" for the top level).
fn daemon_cli() -> BTreeMap<String, String> {
    let top = help(&["--help"]);
    let mut out = BTreeMap::new();
    let commands = top.split("Commands:").nth(1).expect("--help lists Commands:");
    for line in commands.lines().skip(1) {
        if !line.starts_with("  ") || line.trim().is_empty() {
            break;
        }
        let name = line.split_whitespace().next().unwrap().to_string();
        if name == "help" {
            continue; // clap's own `help SUB`
        }
        let text = help(&[&name, "--help"]);
        out.insert(name, text);
    }
    assert!(out.len() >= 5 && out.contains_key("run") && out.contains_key("defaults"), "subcommands: {:?}", out.keys());
    out.insert(String::new(), top);
    out
}

/// xtask's subcommands and the long flags each takes, and the global ones
/// (under ""), read from the clap derive definitions in xtask/src/main.rs.
///
/// Why not run `cargo xtask SUB --help`: xtask is a binary of another package,
/// so this test has no `CARGO_BIN_EXE_` for it, and building it from inside
/// a test (a nested cargo) is slow and contends for the build directory's lock.
/// The definitions are regular instead: `struct Cli` (global `#[arg(long…)]`
/// fields) and `enum Cmd`, one variant per subcommand (clap names it in
/// kebab-case, `DebTest` → `deb-test`, unless `#[command(name = "…")]`), whose
/// fields are flags when their `#[arg(…)]` has `long` (named after the field
/// in kebab-case, `soak_seconds` → `--soak-seconds`, or `long = "…"`; aliases
/// added). A variant whose flags live elsewhere (a tuple variant, `flatten`)
/// fails the test rather than being skipped, and the result is checked for
/// flags known to exist, so a refactor the reader does not understand fails
/// loudly instead of checking nothing.
fn xtask_cli() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::fs::read_to_string(root().join("xtask/src/main.rs")).unwrap();
    let body = |start: &str| -> Vec<&str> {
        let from = src.find(start).unwrap_or_else(|| panic!("xtask/src/main.rs has no `{start}`"));
        src[from..].lines().skip(1).take_while(|l| *l != "}").collect()
    };
    let kebab = |name: &str| -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    };
    // The flags of the fields in `lines` (one struct body or variant body).
    let flags_of = |lines: &[&str], indent: usize| -> BTreeSet<String> {
        let pad = " ".repeat(indent);
        let mut flags = BTreeSet::new();
        let mut attrs = String::new();
        for l in lines {
            let Some(t) = l.strip_prefix(&pad) else { continue };
            if t.starts_with(' ') || t.starts_with("///") || t.starts_with("//") {
                continue;
            }
            if t.starts_with("#[") {
                attrs.push_str(t);
                assert!(!t.contains("flatten"), "xtask_cli cannot read a flattened struct: {t}");
                continue;
            }
            if let Some((field, _)) = t.split_once(':') {
                let field = field.trim().trim_start_matches("pub ").trim();
                if field.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') && !field.is_empty() {
                    let words: Vec<&str> = attrs.split(|c: char| !(c.is_alphanumeric() || c == '_')).collect();
                    if words.contains(&"long") {
                        let named = attrs.split("long = \"").nth(1).and_then(|r| r.split('"').next());
                        flags.insert(format!("--{}", named.map_or_else(|| field.replace('_', "-"), str::to_string)));
                        for key in ["alias = \"", "visible_alias = \""] {
                            for r in attrs.split(key).skip(1) {
                                flags.insert(format!("--{}", r.split('"').next().unwrap()));
                            }
                        }
                    }
                }
                attrs.clear();
            }
        }
        flags
    };
    let mut out = BTreeMap::new();
    let mut global = flags_of(&body("struct Cli {"), 4);
    global.insert("--help".into());
    out.insert(String::new(), global);
    let cmd = body("enum Cmd {");
    let mut i = 0;
    let mut rename: Option<String> = None;
    while i < cmd.len() {
        let l = cmd[i];
        let Some(t) = l.strip_prefix("    ") else {
            i += 1;
            continue;
        };
        if t.starts_with("#[command(") {
            rename = t.split("name = \"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
        }
        if !t.starts_with(|c: char| c.is_ascii_uppercase()) {
            i += 1;
            continue;
        }
        let name: String = t.chars().take_while(|c| c.is_alphanumeric()).collect();
        let sub = rename.take().unwrap_or_else(|| kebab(&name));
        let after = t[name.len()..].trim();
        assert!(!after.starts_with('('), "xtask_cli cannot read the tuple variant `{t}`: teach it, or use named fields");
        let mut fields = Vec::new();
        if after.starts_with('{') {
            i += 1;
            while i < cmd.len() && cmd[i] != "    }," {
                fields.push(cmd[i]);
                i += 1;
            }
        }
        out.insert(sub, flags_of(&fields, 8));
        i += 1;
    }
    // What the reader must have found (flags that exist, so a reader that
    // lost its way fails here).
    for (sub, flag) in [("", "--accel"), ("vm-test", "--kernel"), ("vm-test", "--soak-seconds"), ("ab", "--workload"), ("deb-test", "--cgroup-soak-seconds")] {
        assert!(out.get(sub).is_some_and(|f| f.contains(flag)), "xtask_cli did not find {sub} {flag}: {out:?}");
    }
    assert!(out.contains_key("test") && out.contains_key("run") && out.len() > 15, "{out:?}");
    out
}

/// A token without the punctuation prose and synopses put around it.
fn bare(token: &str) -> &str {
    token.trim_start_matches(['`', '(', '[', '"', '\'', '$']).trim_end_matches(['`', ')', ']', '"', '\'', ',', '.', ';', ':'])
}

/// The long flag in a token (`[--range`, `--kernel=X`, `--once]`), if any.
fn long_flag(token: &str) -> Option<String> {
    let t = token.trim_start_matches(['[', '(', '`', '"', '\'']);
    let name = t.strip_prefix("--")?;
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let name: String = name.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect();
    Some(format!("--{}", name.trim_end_matches(['.', '-'])))
}

/// One command found in the docs: `daemon` or `xtask`, its subcommand ("" for
/// none), and its long flags.
#[derive(Debug)]
struct Found {
    tool: &'static str,
    sub: String,
    flags: Vec<String>,
}

/// The commands in one piece of code (a span, or a block's logical line).
/// `span`: a span that starts with a daemon subcommand counts as one.
fn commands(code: &str, daemon_subs: &BTreeSet<String>, span: bool) -> Vec<Found> {
    let tokens: Vec<&str> = code.split_whitespace().collect();
    let is_daemon = |i: usize| {
        let t = bare(tokens[i]);
        (t == "remote-vm-daemon" || t.ends_with("/remote-vm-daemon"))
            && !(i > 0 && matches!(tokens[i - 1], "-p" | "--package" | "--bin"))
    };
    let is_xtask = |i: usize| bare(tokens[i]) == "cargo" && tokens.get(i + 1).is_some_and(|t| bare(t) == "xtask");
    let mut out = Vec::new();
    let mut i = 0;
    // `check --format json`: a span naming a daemon subcommand and its flags.
    if span && tokens.len() > 1 && daemon_subs.contains(tokens[0]) && tokens[1].starts_with("--") {
        out.push(Found { tool: "daemon", sub: tokens[0].to_string(), flags: Vec::new() });
        i = 1;
    }
    while i < tokens.len() {
        let start = if is_daemon(i) {
            Some(("daemon", i + 1))
        } else if is_xtask(i) {
            Some(("xtask", i + 2))
        } else {
            None
        };
        if let Some((tool, next)) = start {
            let sub = tokens.get(next).map(|t| bare(t)).filter(|t| t.starts_with(|c: char| c.is_ascii_alphabetic()));
            out.push(Found { tool, sub: sub.unwrap_or("").to_string(), flags: Vec::new() });
            i = if sub.is_some() { next + 1 } else { next };
            continue;
        }
        let t = tokens[i];
        if t.starts_with('#') || t == "&&" || t == "||" || t.ends_with(';') {
            // A comment or the end of a shell command: nothing more is its.
            if let Some(last) = out.last_mut() {
                if last.tool != "done" {
                    out.push(Found { tool: "done", sub: String::new(), flags: Vec::new() });
                }
            }
            if t.starts_with('#') {
                break;
            }
        } else if t == "--" {
            // `cargo xtask run -- FLAGS`: the daemon's `run` flags.
            if out.last().is_some_and(|f| f.tool == "xtask" && f.sub == "run") {
                out.push(Found { tool: "daemon", sub: "run".into(), flags: Vec::new() });
            }
        } else if let Some(flag) = long_flag(t) {
            if let Some(last) = out.last_mut() {
                last.flags.push(flag);
            }
        }
        i += 1;
    }
    out.retain(|f| f.tool != "done");
    out
}

/// The code pieces of a page that may hold commands: each span, and each
/// block's logical lines (a line ending in `\`, or a command line followed by
/// indented lines, continues).
fn code_pieces(page: &Page) -> Vec<(usize, String, bool)> {
    let mut out: Vec<(usize, String, bool)> = page.spans.iter().map(|(l, s)| (*l, s.clone(), true)).collect();
    for block in &page.blocks {
        let mut k = 0;
        while k < block.len() {
            let (line, first) = &block[k];
            let mut text = first.clone();
            let starts_command = {
                let t = first.trim_start().trim_start_matches("$ ");
                t.starts_with("cargo xtask") || bare(t.split_whitespace().next().unwrap_or("")).ends_with("remote-vm-daemon")
            };
            k += 1;
            while k < block.len() {
                let next = &block[k].1;
                let continued = text.trim_end().ends_with('\\')
                    || (starts_command && next.starts_with(char::is_whitespace) && !next.trim().is_empty());
                if !continued {
                    break;
                }
                text = format!("{} {}", text.trim_end().trim_end_matches('\\'), next.trim());
                k += 1;
            }
            out.push((*line, text, false));
        }
    }
    out
}

// ---------------------------------------------------------------- the config

/// The config's keys as `section.key` (top-level keys as `key`), and its sections.
fn config_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = help(&["defaults"]);
    let table: toml::Table = text.parse().expect("`defaults` prints TOML");
    let mut keys = BTreeSet::new();
    let mut sections = BTreeSet::new();
    for (k, v) in &table {
        match v.as_table() {
            Some(t) => {
                sections.insert(k.clone());
                keys.extend(t.keys().map(|key| format!("{k}.{key}")));
            }
            None => {
                keys.insert(k.clone());
            }
        }
    }
    // Old names the defaults' own comments give ("(Also `log_level = …`, its
    // old name.)"): they still parse, so a page may name them. A comment (its
    // consecutive `#` lines) that says "old" names them as `name = …` in
    // backticks; each belongs to the section the comment is in, or to the top
    // when the comment says "at the top".
    let mut section = String::new();
    let mut comment = String::new();
    for line in text.lines().chain(std::iter::once("")) {
        let t = line.trim();
        if let Some(c) = t.strip_prefix('#') {
            comment.push_str(c);
            comment.push(' ');
            continue;
        }
        if comment.split(|c: char| !c.is_alphanumeric()).any(|w| w == "old") {
            let top = section.is_empty() || comment.contains("at the top");
            for piece in comment.split('`').skip(1).step_by(2) {
                if let Some((name, _)) = piece.split_once(" = ") {
                    if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        keys.insert(if top { name.to_string() } else { format!("{section}.{name}") });
                    }
                }
            }
        }
        comment.clear();
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
        }
    }
    assert!(sections.len() >= 4 && keys.contains("web.listen_address") && keys.contains("stalls.threshold_seconds"), "{keys:?}");
    (keys, sections)
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every file name in the repository (not under target/ or hidden directories):
/// `stalls.rs` names a file, not the key `rs` of `[stalls]`.
fn file_names(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.path().is_dir() {
            if name != "target" && name != "node_modules" && !name.starts_with('.') {
                file_names(&entry.path(), out);
            }
        } else {
            out.insert(name);
        }
    }
}

/// `(line, "section.key")` of every config key a page names: `[section] key`
/// (and `[section] a/b`) in code, `section.key` anywhere, for the config's
/// sections; `[word] word` in code with another word in the brackets is
/// returned as it is, to fail as an unknown section.
fn config_refs(page: &Page, sections: &BTreeSet<String>, files: &BTreeSet<String>) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut code: Vec<(usize, &str)> = page.spans.iter().map(|(l, s)| (*l, s.as_str())).collect();
    code.extend(page.block_lines.iter().map(|(l, s)| (*l, s.as_str())));
    for (line, text) in code {
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            let after = &rest[open + 1..];
            let section: String = after.chars().take_while(|&c| word_char(c)).collect();
            let tail = &after[section.len()..];
            let before_ok = !rest[..open].chars().next_back().is_some_and(word_char);
            let lower = section.starts_with(|c: char| c.is_ascii_lowercase()) && section.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if let (true, true, Some(keys)) = (before_ok, lower, tail.strip_prefix("] ")) {
                let keys = keys.trim_start();
                let mut list: String = keys.chars().take_while(|&c| word_char(c) || c == '/').collect();
                list = list.trim_end_matches('/').to_string();
                if list.starts_with(|c: char| c.is_ascii_lowercase()) {
                    for key in list.split('/') {
                        out.push((line, format!("{section}.{key}")));
                    }
                }
            }
            rest = after;
        }
    }
    for (n, l) in page.text.lines().enumerate() {
        for section in sections {
            let pattern = format!("{section}.");
            for (at, _) in l.match_indices(&pattern) {
                let before = l[..at].chars().next_back();
                if before.is_some_and(|c| word_char(c) || matches!(c, '-' | '.' | '/')) {
                    continue; // a flag (`--web.listen-address`), a path, a longer word
                }
                let key: String = l[at + pattern.len()..].chars().take_while(|&c| word_char(c)).collect();
                let after = &l[at + pattern.len() + key.len()..];
                let mut next = after.chars();
                let more = match next.next() {
                    Some('-') | Some('/') => true,
                    Some('.') => next.next().is_some_and(word_char),
                    _ => false,
                };
                if key.is_empty() || !key.starts_with(|c: char| c.is_ascii_lowercase()) || more {
                    continue; // the end of a sentence; a dotted flag name without its dashes
                }
                if files.contains(&format!("{section}.{key}")) {
                    continue; // `stalls.rs`, `stalls.md`: a file
                }
                out.push((n + 1, format!("{section}.{key}")));
            }
        }
    }
    out
}

// ---------------------------------------------------------------- the tests

#[test]
fn links_point_at_what_exists() {
    let mut problems = Vec::new();
    for rel in pages() {
        let page = parse(&std::fs::read_to_string(root().join(&rel)).unwrap());
        let dir = root().join(&rel).parent().unwrap().to_path_buf();
        for (line, target) in links(&page) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() { root().join(&rel) } else { dir.join(path) };
            if !file.exists() {
                problems.push(format!("{}:{line}: ({target}): {} does not exist", rel.display(), path));
                continue;
            }
            if let Some(anchor) = anchor {
                if file.extension().is_some_and(|e| e == "md") && file.is_file() {
                    let known = anchors(&parse(&std::fs::read_to_string(&file).unwrap()));
                    if !known.contains(anchor) {
                        problems.push(format!("{}:{line}: ({target}): no heading of {} has the anchor #{anchor}", rel.display(), if path.is_empty() { "this page" } else { path }));
                    }
                } else if !file.is_file() {
                    problems.push(format!("{}:{line}: ({target}): an anchor into a directory", rel.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "bad links:\n{}", problems.join("\n"));
}

#[test]
fn commands_name_subcommands_and_flags_that_exist() {
    let daemon = daemon_cli();
    let daemon_subs: BTreeSet<String> = daemon.keys().filter(|k| !k.is_empty()).cloned().collect();
    let xtask = xtask_cli();
    let mut problems = Vec::new();
    let mut checked = 0;
    for rel in pages() {
        let page = parse(&std::fs::read_to_string(root().join(&rel)).unwrap());
        for (line, code, span) in code_pieces(&page) {
            for found in commands(&code, &daemon_subs, span) {
                checked += 1;
                let at = format!("{}:{line}", rel.display());
                match found.tool {
                    "daemon" => {
                        let Some(help) = daemon.get(&found.sub) else {
                            problems.push(format!("{at}: `remote-vm-daemon {}`: no such subcommand (in: {code})", found.sub));
                            continue;
                        };
                        for flag in &found.flags {
                            if !lists_flag(help, flag) {
                                let sub = if found.sub.is_empty() { String::new() } else { format!(" {}", found.sub) };
                                problems.push(format!("{at}: `remote-vm-daemon{sub}` has no {flag} (in: {code})"));
                            }
                        }
                    }
                    _ => {
                        let Some(flags) = xtask.get(&found.sub) else {
                            problems.push(format!("{at}: `cargo xtask {}`: no such subcommand (in: {code})", found.sub));
                            continue;
                        };
                        for flag in &found.flags {
                            if !flags.contains(flag) && !xtask[""].contains(flag) {
                                problems.push(format!("{at}: `cargo xtask {}` has no {flag} (in: {code})", found.sub));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} commands found in the docs");
    assert!(problems.is_empty(), "commands the tools do not have:\n{}", problems.join("\n"));
}

#[test]
fn config_keys_exist() {
    let (keys, sections) = config_keys();
    let mut files = BTreeSet::new();
    file_names(&root(), &mut files);
    let mut problems = Vec::new();
    let mut checked = 0;
    for rel in pages() {
        let page = parse(&std::fs::read_to_string(root().join(&rel)).unwrap());
        for (line, key) in config_refs(&page, &sections, &files) {
            checked += 1;
            if !keys.contains(&key) {
                let (section, name) = key.split_once('.').unwrap();
                let what = if sections.contains(section) { format!("`[{section}] {name}`: no such key") } else { format!("`[{section}]`: no such section") };
                problems.push(format!("{}:{line}: {what} in `remote-vm-daemon defaults`", rel.display()));
            }
        }
    }
    assert!(checked > 10, "only {checked} config keys found in the docs");
    assert!(problems.is_empty(), "config keys the daemon does not have:\n{}", problems.join("\n"));
}

#[test]
fn the_readers_read_what_they_should() {
    assert_eq!(slug("Your own A/B pair: `cargo xtask kernels --build`"), "your-own-ab-pair-cargo-xtask-kernels---build");
    assert_eq!(slug("Probe costs: `self_stats`"), "probe-costs-self_stats");
    assert_eq!(slug("What a [link](x.md) — here"), "what-a-link--here");
    let page = parse("# A\n\nsee [b](b.md#c) and `[x](y)`\n\n```\n[z](w)\n# not a heading\n```\n\n# A\n");
    assert_eq!(links(&page), vec![(3, "b.md#c".to_string())]);
    assert_eq!(anchors(&page), BTreeSet::from(["a".to_string(), "a-1".to_string()]));
    let page = parse("two lines: `cargo xtask\nvm-test --only x`");
    assert_eq!(page.spans, vec![(1, "cargo xtask vm-test --only x".to_string())]);
    let subs = BTreeSet::from(["check".to_string(), "run".to_string()]);
    let found = commands("cargo xtask run -- --listen :1 --log-level debug", &subs, true);
    assert_eq!(found.iter().map(|f| (f.tool, f.sub.as_str(), f.flags.clone())).collect::<Vec<_>>(), vec![
        ("xtask", "run", vec![]),
        ("daemon", "run", vec!["--listen".to_string(), "--log-level".to_string()]),
    ]);
    let found = commands("REMOTE_VM_BLESS=1 cargo test -p remote-vm-daemon --test catalog", &subs, true);
    assert!(found.is_empty(), "{found:?}");
    let found = commands("check --format json", &subs, true);
    assert_eq!((found[0].sub.as_str(), found[0].flags.clone()), ("check", vec!["--format".to_string()]));
    assert!(lists_flag("  --log.level <L> [alias: --log-level]", "--log-level"));
    assert!(!lists_flag("  --log.level <L>", "--log"));
}
