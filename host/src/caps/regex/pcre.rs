//! The translator from PCRE syntax (as `ngx.re` takes it) to
//! `regex-syntax`'s: [`translate`] rewrites a pattern for the engine, and
//! refuses, naming the feature, what a linear-time engine cannot do. It also
//! bounds a pattern's length ([`MAX_PATTERN_BYTES`]) and nesting
//! ([`MAX_NESTING`]).

use std::fmt::Write as _;

use super::Syntax;

/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 32 * 1024;
/// Deepest nesting of groups in a pattern.
pub const MAX_NESTING: usize = 200;

/// A PCRE pattern rewritten for the engine.
#[derive(Debug, PartialEq)]
pub struct Translated {
    /// The pattern in `regex-syntax` syntax, without group names (the
    /// names are kept here instead, so that `D` can repeat them).
    pub pattern: String,
    /// Capture groups, not counting group 0.
    pub groups: u32,
    /// Named groups and their numbers, in group order.
    pub names: Vec<(String, u32)>,
    /// The pattern starts with `\G`: every search is anchored.
    pub anchored: bool,
}

/// What can follow the last thing emitted: is a quantifier allowed?
#[derive(Debug, Clone, Copy, PartialEq)]
enum Last {
    /// The start of the pattern, of a group, of an alternative, or an
    /// option setting: nothing to repeat.
    Nothing,
    /// Something a quantifier applies to.
    Item,
}

/// One element of a character class: a character, or a set of them
/// (written as class items).
enum ClassAtom {
    Char(u32),
    Set(String),
}

/// `[...]` items for PCRE's ASCII shorthand classes (PCRE does not make
/// `\d`, `\w`, `\s` Unicode-aware unless asked to with UCP, which
/// OpenResty does not).
const DIGIT: &str = "0-9";
const WORD: &str = "0-9A-Za-z_";
const SPACE: &str = r"\t\n\x0B\x0C\r\x20";
const HSPACE_BYTES: &str = r"\t\x20\xA0";
const HSPACE_UNICODE: &str =
    r"\t\x20\x{A0}\x{1680}\x{180E}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}";
const VSPACE_BYTES: &str = r"\n\x0B\x0C\r\x85";
const VSPACE_UNICODE: &str = r"\n\x0B\x0C\r\x{85}\x{2028}\x{2029}";

const POSIX_CLASSES: &[&str] = &[
    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
    "space", "upper", "word", "xdigit",
];

/// Why the engine cannot have a feature.
const LINEAR: &str = "(moonwall's regex engine runs in linear time)";

struct Translator<'a> {
    p: &'a [u8],
    i: usize,
    out: String,
    utf8: bool,
    dupnames: bool,
    /// Extended mode (`x`) where the scanner is now.
    extended: bool,
    /// For each open group, the extended mode to restore when it closes.
    open: Vec<bool>,
    groups: u32,
    names: Vec<(String, u32)>,
    last: Last,
    /// Something was emitted (a `\G` must come first).
    emitted: bool,
    /// A `|` outside any group.
    top_alternation: bool,
    anchored: bool,
}

/// Translate `pattern` (PCRE syntax, as `ngx.re` takes it) for the engine.
/// The error is the reason, as PCRE would word it where it has a word.
pub fn translate(pattern: &[u8], syntax: Syntax) -> Result<Translated, String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "pattern too long ({} bytes, at most {MAX_PATTERN_BYTES})",
            pattern.len()
        ));
    }
    if syntax.utf8
        && let Err(error) = std::str::from_utf8(pattern)
    {
        return Err(format!(
            "invalid UTF-8 in the pattern at byte {} (the \"u\" option needs UTF-8)",
            error.valid_up_to()
        ));
    }
    let mut t = Translator {
        p: pattern,
        i: 0,
        out: String::with_capacity(pattern.len() + 16),
        utf8: syntax.utf8,
        dupnames: syntax.dupnames,
        extended: syntax.extended,
        open: Vec::new(),
        groups: 0,
        names: Vec::new(),
        last: Last::Nothing,
        emitted: false,
        top_alternation: false,
        anchored: false,
    };
    t.run()?;
    Ok(Translated {
        pattern: t.out,
        groups: t.groups,
        names: t.names,
        anchored: t.anchored,
    })
}

fn unsupported(what: &str) -> String {
    format!("{what} are not supported {LINEAR}")
}

impl Translator<'_> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.p.get(self.i + ahead).copied()
    }

    /// The character at `i` and its length in bytes: a UTF-8 character in
    /// UTF-8 mode (the pattern was checked), else a byte.
    fn char_at(&self, i: usize) -> (u32, usize) {
        let byte = self.p[i];
        if !self.utf8 || byte < 0x80 {
            return (u32::from(byte), 1);
        }
        let len = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        let end = (i + len).min(self.p.len());
        match std::str::from_utf8(&self.p[i..end])
            .ok()
            .and_then(|s| s.chars().next())
        {
            Some(c) => (u32::from(c), c.len_utf8()),
            None => (u32::from(byte), 1),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        while self.i < self.p.len() {
            let c = self.p[self.i];
            if self.extended {
                if matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
                    self.i += 1;
                    continue;
                }
                if c == b'#' {
                    while self.i < self.p.len() && self.p[self.i] != b'\n' {
                        self.i += 1;
                    }
                    continue;
                }
            }
            match c {
                b'\\' => self.escape()?,
                b'[' => self.class()?,
                b'(' => self.group_open()?,
                b')' => {
                    let Some(extended) = self.open.pop() else {
                        return Err("unmatched closing parenthesis".into());
                    };
                    self.extended = extended;
                    self.out.push(')');
                    self.i += 1;
                    self.last = Last::Item;
                }
                b'|' => {
                    if self.open.is_empty() {
                        self.top_alternation = true;
                    }
                    self.out.push('|');
                    self.i += 1;
                    self.last = Last::Nothing;
                    self.emitted = true;
                }
                b'*' | b'+' | b'?' => {
                    self.i += 1;
                    self.quantifier(&(c as char).to_string())?;
                }
                b'{' => match self.brace_quantifier()? {
                    Some((text, len)) => {
                        self.i += len;
                        self.quantifier(&text)?;
                    }
                    None => {
                        self.i += 1;
                        self.literal(u32::from(b'{'));
                    }
                },
                b'^' | b'$' | b'.' => {
                    self.out.push(c as char);
                    self.i += 1;
                    self.item();
                }
                _ => {
                    let (cp, len) = self.char_at(self.i);
                    self.i += len;
                    self.literal(cp);
                }
            }
        }
        if !self.open.is_empty() {
            return Err("missing closing parenthesis".into());
        }
        if self.anchored && self.top_alternation {
            return Err(r"\G is only supported at the start of the whole pattern".into());
        }
        Ok(())
    }

    fn item(&mut self) {
        self.last = Last::Item;
        self.emitted = true;
    }

    fn literal(&mut self, cp: u32) {
        push_char(&mut self.out, cp, self.utf8);
        self.item();
    }

    /// Emit a quantifier (`*`, `+`, `?`, `{n,m}`) whose text is consumed,
    /// with its lazy `?`; refuse a possessive `+`.
    fn quantifier(&mut self, text: &str) -> Result<(), String> {
        if self.last == Last::Nothing {
            return Err("quantifier does not follow a repeatable item".into());
        }
        self.out.push_str(text);
        match self.peek(0) {
            Some(b'+') => return Err(unsupported("possessive quantifiers (such as *+ or ++)")),
            Some(b'?') => {
                self.out.push('?');
                self.i += 1;
            }
            _ => {}
        }
        self.last = Last::Item;
        Ok(())
    }

    /// At `{`: the quantifier it starts and its length in bytes, or none if
    /// it is a literal `{` (as PCRE reads `{` that starts no `{n}`,
    /// `{n,}` or `{n,m}`).
    fn brace_quantifier(&self) -> Result<Option<(String, usize)>, String> {
        let rest = &self.p[self.i + 1..];
        let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
        let n1 = digits(rest);
        if n1 == 0 {
            return Ok(None);
        }
        let mut at = n1;
        let mut max = None;
        let mut open = false;
        if rest.get(at) == Some(&b',') {
            at += 1;
            let n2 = digits(&rest[at..]);
            if n2 == 0 {
                open = true;
            } else {
                max = Some(&rest[at..at + n2]);
            }
            at += n2;
        }
        if rest.get(at) != Some(&b'}') {
            return Ok(None);
        }
        let number = |s: &[u8]| -> Result<u32, String> {
            let value = s
                .iter()
                .try_fold(0u32, |n, d| {
                    n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
                })
                .filter(|n| *n <= 65535);
            value.ok_or_else(|| "number too big in {} quantifier".to_string())
        };
        let min = number(&rest[..n1])?;
        let text = match (max, open) {
            (Some(max), _) => {
                let max = number(max)?;
                if max < min {
                    return Err("numbers out of order in {} quantifier".into());
                }
                format!("{{{min},{max}}}")
            }
            (None, true) => format!("{{{min},}}"),
            (None, false) => format!("{{{min}}}"),
        };
        Ok(Some((text, at + 2)))
    }

    /// A character value from an escape, checked for the mode.
    fn code_point(&self, value: u32) -> Result<u32, String> {
        if !self.utf8 && value > 0xFF {
            return Err(
                "character code point value in \\x{} or \\o{} is too large (use the \"u\" option)"
                    .into(),
            );
        }
        if char::from_u32(value).is_none() {
            return Err(format!(
                "character code point value {value:#x} is not a valid character"
            ));
        }
        Ok(value)
    }

    /// After `\x`, `\o` or `\0` (at the letter or digit): a number in
    /// `radix`, either in braces or up to `max_digits` digits.
    fn number_escape(
        &mut self,
        radix: u32,
        max_digits: usize,
        braces: bool,
    ) -> Result<u32, String> {
        if braces && self.peek(0) == Some(b'{') {
            let start = self.i + 1;
            let Some(close) = self.p[start..].iter().position(|&b| b == b'}') else {
                return Err("missing } after \\x{ or \\o{".into());
            };
            let digits = &self.p[start..start + close];
            if digits.is_empty() || digits.len() > 8 {
                return Err("invalid number in \\x{} or \\o{}".into());
            }
            let mut value: u32 = 0;
            for &d in digits {
                let Some(v) = (d as char).to_digit(radix) else {
                    return Err("non-digit in \\x{} or \\o{}".into());
                };
                value = value
                    .checked_mul(radix)
                    .and_then(|n| n.checked_add(v))
                    .ok_or(
                        "character code point value in \\x{} or \\o{} is too large".to_string(),
                    )?;
            }
            self.i = start + close + 1;
            return self.code_point(value);
        }
        let mut value = 0;
        let mut count = 0;
        while count < max_digits {
            let Some(v) = self.peek(0).and_then(|d| (d as char).to_digit(radix)) else {
                break;
            };
            value = value * radix + v;
            self.i += 1;
            count += 1;
        }
        self.code_point(value)
    }

    /// `\p{...}`, `\P{...}`, `\pL` (at the `p`/`P`): the class item.
    fn property(&mut self) -> Result<String, String> {
        let negated = self.p[self.i] == b'P';
        self.i += 1;
        if !self.utf8 {
            return Err("\\p and \\P need the \"u\" option".into());
        }
        let name = match self.peek(0) {
            Some(b'{') => {
                let start = self.i + 1;
                let Some(close) = self.p[start..].iter().position(|&b| b == b'}') else {
                    return Err("malformed \\P or \\p sequence".into());
                };
                self.i = start + close + 1;
                &self.p[start..start + close]
            }
            Some(c) if c.is_ascii_alphabetic() => {
                self.i += 1;
                &self.p[self.i - 1..self.i]
            }
            _ => return Err("malformed \\P or \\p sequence".into()),
        };
        let (negated, name) = match name.split_first() {
            Some((b'^', rest)) => (!negated, rest),
            _ => (negated, name),
        };
        let valid = !name.is_empty()
            && name.iter().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b' ' | b'&' | b'-' | b'=' | b':')
            });
        if !valid {
            return Err("malformed \\P or \\p sequence".into());
        }
        let name = String::from_utf8_lossy(name);
        let name = if name == "L&" { "LC".into() } else { name };
        Ok(format!("\\{}{{{name}}}", if negated { 'P' } else { 'p' }))
    }

    /// At `\` outside a class.
    fn escape(&mut self) -> Result<(), String> {
        self.i += 1;
        let Some(e) = self.peek(0) else {
            return Err("\\ at end of pattern".into());
        };
        let set =
            |items: &str, negated: bool| format!("[{}{items}]", if negated { "^" } else { "" });
        let hspace = if self.utf8 {
            HSPACE_UNICODE
        } else {
            HSPACE_BYTES
        };
        let vspace = if self.utf8 {
            VSPACE_UNICODE
        } else {
            VSPACE_BYTES
        };
        let text: String = match e {
            b'd' | b'D' => set(DIGIT, e == b'D'),
            // Scoped case-sensitive: with `i` and `u`, `[k]` would also
            // match the Kelvin sign, which PCRE's ASCII \w does not.
            b'w' | b'W' => format!("(?-i:{})", set(WORD, e == b'W')),
            b's' | b'S' => set(SPACE, e == b'S'),
            b'h' | b'H' => set(hspace, e == b'H'),
            b'v' | b'V' => set(vspace, e == b'V'),
            b'R' => format!("(?:\\r\\n|[{vspace}])"),
            b'N' => {
                if self.peek(1) == Some(b'{') {
                    return Err("\\N{...} is not supported".into());
                }
                "[^\\n]".into()
            }
            b'b' => "(?-u:\\b)".into(),
            b'B' => "(?-u:\\B)".into(),
            b'A' => "\\A".into(),
            b'z' | b'Z' => "\\z".into(),
            b'G' => {
                if self.emitted || !self.open.is_empty() {
                    return Err(r"\G is only supported at the start of the whole pattern".into());
                }
                self.anchored = true;
                self.i += 1;
                return Ok(());
            }
            b'K' => return Err(format!("\\K is not supported {LINEAR}")),
            b'C' => return Err("\\C (one code unit) is not supported".into()),
            b'X' => return Err("\\X (extended grapheme clusters) is not supported".into()),
            b'1'..=b'9' => return Err(unsupported("backreferences")),
            b'g' => {
                return Err(match self.peek(1) {
                    Some(b'<' | b'\'') => unsupported("subroutine calls (recursion)"),
                    _ => unsupported("backreferences"),
                });
            }
            b'k' => return Err(unsupported("backreferences")),
            b'Q' => {
                self.i += 1;
                while self.i < self.p.len() {
                    if self.p[self.i] == b'\\' && self.peek(1) == Some(b'E') {
                        self.i += 2;
                        return Ok(());
                    }
                    let (cp, len) = self.char_at(self.i);
                    self.i += len;
                    self.literal(cp);
                }
                return Ok(());
            }
            b'E' => {
                self.i += 1;
                return Ok(());
            }
            b'p' | b'P' => {
                let item = self.property()?;
                self.out.push_str(&item);
                self.item();
                return Ok(());
            }
            _ => {
                let cp = self.char_escape()?;
                self.literal(cp);
                return Ok(());
            }
        };
        self.i += 1;
        self.out.push_str(&text);
        self.item();
        Ok(())
    }

    /// At the character after `\` that stands for one character (in or
    /// out of a class): its value, the escape consumed.
    fn char_escape(&mut self) -> Result<u32, String> {
        let e = self.p[self.i];
        let simple = match e {
            b'a' => Some(0x07),
            b'e' => Some(0x1B),
            b'f' => Some(0x0C),
            b'n' => Some(0x0A),
            b'r' => Some(0x0D),
            b't' => Some(0x09),
            _ => None,
        };
        if let Some(value) = simple {
            self.i += 1;
            return Ok(value);
        }
        match e {
            b'0' => {
                self.i += 1;
                self.number_escape(8, 2, false)
            }
            b'o' => {
                self.i += 1;
                if self.peek(0) != Some(b'{') {
                    return Err("missing opening brace after \\o".into());
                }
                self.number_escape(8, 0, true)
            }
            b'x' => {
                self.i += 1;
                self.number_escape(16, 2, true)
            }
            b'c' => {
                let Some(c) = self.peek(1).filter(|c| (0x20..0x7F).contains(c)) else {
                    return Err("\\c must be followed by a printable ASCII character".into());
                };
                self.i += 2;
                Ok(u32::from(c.to_ascii_uppercase() ^ 0x40))
            }
            b'L' | b'l' | b'U' | b'u' => {
                Err("PCRE does not support \\L, \\l, \\N{name}, \\U, or \\u".into())
            }
            c if c.is_ascii_alphanumeric() => Err(format!(
                "unrecognized character follows \\ (\\{})",
                c as char
            )),
            _ => {
                let (cp, len) = self.char_at(self.i);
                self.i += len;
                Ok(cp)
            }
        }
    }

    /// At `(`.
    fn group_open(&mut self) -> Result<(), String> {
        if self.peek(1) == Some(b'*')
            && self
                .peek(2)
                .is_some_and(|c| c.is_ascii_uppercase() || c == b':')
        {
            return Err(format!(
                "backtracking control verbs and (*...) settings are not supported {LINEAR}"
            ));
        }
        if self.peek(1) != Some(b'?') {
            self.i += 1;
            self.groups += 1;
            return self.push_group("(");
        }
        let Some(k) = self.peek(2) else {
            return Err("unrecognized character after (? or (?-".into());
        };
        match k {
            b'#' => {
                let Some(close) = self.p[self.i..].iter().position(|&b| b == b')') else {
                    return Err("missing ) after (?# comment".into());
                };
                self.i += close + 1;
                Ok(())
            }
            b':' => {
                self.i += 3;
                self.push_group("(?:")
            }
            b'|' => Err("branch reset groups (?|...) are not supported".into()),
            b'>' => Err(unsupported("atomic groups (?>...)")),
            b'=' | b'!' => Err(unsupported("lookahead assertions")),
            b'<' if matches!(self.peek(3), Some(b'=' | b'!')) => {
                Err(unsupported("lookbehind assertions"))
            }
            b'<' => {
                self.i += 3;
                self.named_group(b'>')
            }
            b'\'' => {
                self.i += 3;
                self.named_group(b'\'')
            }
            b'P' => match self.peek(3) {
                Some(b'<') => {
                    self.i += 4;
                    self.named_group(b'>')
                }
                Some(b'=') => Err(unsupported("backreferences")),
                Some(b'>') => Err(unsupported("subroutine calls (recursion)")),
                _ => Err("unrecognized character after (?P".into()),
            },
            b'&' | b'R' | b'0'..=b'9' => Err(unsupported("recursion and subroutine calls")),
            b'+' | b'-' if self.peek(3).is_some_and(|c| c.is_ascii_digit()) => {
                Err(unsupported("recursion and subroutine calls"))
            }
            b'(' => Err(unsupported("conditional groups (?(...)")),
            b'C' => Err("callouts (?C...) are not supported".into()),
            _ => self.option_setting(),
        }
    }

    fn push_group(&mut self, text: &str) -> Result<(), String> {
        if self.open.len() >= MAX_NESTING {
            return Err(format!(
                "parentheses are too deeply nested (at most {MAX_NESTING})"
            ));
        }
        self.open.push(self.extended);
        self.out.push_str(text);
        self.last = Last::Nothing;
        self.emitted = true;
        Ok(())
    }

    /// After `(?<`, `(?'` or `(?P<`: the name up to `terminator`.
    fn named_group(&mut self, terminator: u8) -> Result<(), String> {
        let start = self.i;
        let len = self.p[start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .count();
        if len == 0 {
            return Err("subpattern name expected".into());
        }
        if self.p[start].is_ascii_digit() {
            return Err("subpattern name must start with a non-digit".into());
        }
        if len > 32 {
            return Err("subpattern name is too long (maximum 32 characters)".into());
        }
        if self.p.get(start + len) != Some(&terminator) {
            return Err("syntax error in subpattern name (missing terminator?)".into());
        }
        let name = String::from_utf8_lossy(&self.p[start..start + len]).into_owned();
        if !self.dupnames && self.names.iter().any(|(n, _)| *n == name) {
            return Err(format!(
                "two named subpatterns have the same name \"{name}\" (the \"D\" option allows it)"
            ));
        }
        self.i = start + len + 1;
        self.groups += 1;
        self.names.push((name, self.groups));
        self.push_group("(")
    }

    /// At `(?` followed by option letters: `(?i)`, `(?x-s:...)`.
    fn option_setting(&mut self) -> Result<(), String> {
        let mut j = self.i + 2;
        let mut on = String::new();
        let mut off = String::new();
        let mut negate = false;
        let mut extended = None;
        loop {
            let Some(&c) = self.p.get(j) else {
                return Err("missing ) after (? option setting".into());
            };
            j += 1;
            match c {
                b')' | b':' => {
                    let flags = if off.is_empty() {
                        on
                    } else {
                        format!("{on}-{off}")
                    };
                    self.i = j;
                    if c == b':' {
                        self.push_group(&format!("(?{flags}:"))?;
                        if let Some(x) = extended {
                            self.extended = x;
                        }
                    } else {
                        if let Some(x) = extended {
                            self.extended = x;
                        }
                        if !flags.is_empty() {
                            write!(self.out, "(?{flags})").expect("writing to a String");
                        }
                        self.last = Last::Nothing;
                    }
                    return Ok(());
                }
                b'-' if !negate => negate = true,
                b'i' | b'm' | b's' | b'U' => {
                    if negate { &mut off } else { &mut on }.push(c as char);
                }
                b'x' => extended = Some(!negate),
                b'J' => {
                    return Err(
                        "(?J) is not supported: use the \"D\" option for duplicate names".into(),
                    );
                }
                b'n' => return Err("(?n) (no automatic capture) is not supported".into()),
                _ => return Err("unrecognized character after (? or (?-".into()),
            }
        }
    }

    /// At `[`: a character class, rebuilt item by item (the engine gives
    /// `[`, `&&`, `--`, `~~` meanings inside classes that PCRE does not).
    fn class(&mut self) -> Result<(), String> {
        if self.peek(1) == Some(b':') && self.posix_name(self.i).is_some() {
            return Err("POSIX named classes are supported only within a class".into());
        }
        self.i += 1;
        let mut out = String::from("[");
        if self.peek(0) == Some(b'^') {
            out.push('^');
            self.i += 1;
        }
        let mut first = true;
        loop {
            let Some(c) = self.peek(0) else {
                return Err("missing terminating ] for character class".into());
            };
            if c == b']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            if c == b'[' && matches!(self.peek(1), Some(b':' | b'.' | b'=')) {
                if let Some((item, len)) = self.posix_name(self.i) {
                    self.i += len;
                    out.push_str(&item);
                    continue;
                }
                if self.terminated_posix(self.i) {
                    return Err(if self.peek(1) == Some(b':') {
                        "unknown POSIX class name".into()
                    } else {
                        "POSIX collating elements are not supported".into()
                    });
                }
            }
            if c == b'\\' && self.peek(1) == Some(b'Q') {
                self.i += 2;
                while self.i < self.p.len() {
                    if self.p[self.i] == b'\\' && self.peek(1) == Some(b'E') {
                        self.i += 2;
                        break;
                    }
                    let (cp, len) = self.char_at(self.i);
                    self.i += len;
                    push_char(&mut out, cp, self.utf8);
                }
                continue;
            }
            if c == b'\\' && self.peek(1) == Some(b'E') {
                self.i += 2;
                continue;
            }
            let low = match self.class_atom()? {
                ClassAtom::Char(low) => low,
                ClassAtom::Set(items) => {
                    out.push_str(&items);
                    continue;
                }
            };
            let is_range = self.peek(0) == Some(b'-')
                && self.peek(1).is_some_and(|n| n != b']')
                && !(self.peek(1) == Some(b'[') && self.posix_name(self.i + 1).is_some());
            if !is_range {
                push_char(&mut out, low, self.utf8);
                continue;
            }
            self.i += 1;
            match self.class_atom()? {
                ClassAtom::Char(high) => {
                    if high < low {
                        return Err("range out of order in character class".into());
                    }
                    push_char(&mut out, low, self.utf8);
                    out.push('-');
                    push_char(&mut out, high, self.utf8);
                }
                ClassAtom::Set(items) => {
                    push_char(&mut out, low, self.utf8);
                    out.push_str("\\-");
                    out.push_str(&items);
                }
            }
        }
        out.push(']');
        self.out.push_str(&out);
        self.item();
        Ok(())
    }

    /// At `[` inside a class: `[:name:]` or `[:^name:]` as an item and its
    /// length, if it is one.
    fn posix_name(&self, at: usize) -> Option<(String, usize)> {
        let rest = self.p.get(at..)?;
        if rest.len() < 4 || rest[0] != b'[' || rest[1] != b':' {
            return None;
        }
        let end = rest[2..].windows(2).position(|w| w == b":]")? + 2;
        let mut name = &rest[2..end];
        let negated = name.first() == Some(&b'^');
        if negated {
            name = &name[1..];
        }
        let name = std::str::from_utf8(name).ok()?;
        if !POSIX_CLASSES.contains(&name) {
            return None;
        }
        let item = format!("[:{}{name}:]", if negated { "^" } else { "" });
        Some((item, end + 2))
    }

    /// `[:x:]`, `[.x.]` or `[=x=]` at `at` (no `]` before its end).
    fn terminated_posix(&self, at: usize) -> bool {
        let (Some(&kind), Some(rest)) = (self.p.get(at + 1), self.p.get(at + 2..)) else {
            return false;
        };
        for (i, &b) in rest.iter().enumerate() {
            if b == kind && rest.get(i + 1) == Some(&b']') {
                return true;
            }
            if b == b']' {
                return false;
            }
        }
        false
    }

    /// One item of a class (not `]`, `[:...:]` or `\Q`): a character or a
    /// set, consumed.
    fn class_atom(&mut self) -> Result<ClassAtom, String> {
        let c = self.p[self.i];
        if c != b'\\' {
            let (cp, len) = self.char_at(self.i);
            self.i += len;
            return Ok(ClassAtom::Char(cp));
        }
        self.i += 1;
        let Some(e) = self.peek(0) else {
            return Err("\\ at end of pattern".into());
        };
        let negated = |items: &str| format!("[^{items}]");
        let hspace = if self.utf8 {
            HSPACE_UNICODE
        } else {
            HSPACE_BYTES
        };
        let vspace = if self.utf8 {
            VSPACE_UNICODE
        } else {
            VSPACE_BYTES
        };
        let set = match e {
            b'd' => DIGIT.to_string(),
            b'D' => negated(DIGIT),
            b'w' => WORD.to_string(),
            b'W' => negated(WORD),
            b's' => SPACE.to_string(),
            b'S' => negated(SPACE),
            b'h' => hspace.to_string(),
            b'H' => negated(hspace),
            b'v' => vspace.to_string(),
            b'V' => negated(vspace),
            b'p' | b'P' => self.property()?,
            b'b' => {
                self.i += 1;
                return Ok(ClassAtom::Char(0x08));
            }
            b'1'..=b'7' => {
                let value = self.number_escape(8, 3, false)?;
                return Ok(ClassAtom::Char(value));
            }
            b'8' | b'9' => return Err("invalid escape sequence in character class".into()),
            b'B' | b'R' | b'X' | b'N' | b'A' | b'z' | b'Z' | b'G' | b'K' | b'C' | b'g' | b'k' => {
                return Err(format!(
                    "escape sequence \\{} is invalid in character class",
                    e as char
                ));
            }
            _ => return Ok(ClassAtom::Char(self.char_escape()?)),
        };
        if !matches!(e, b'p' | b'P') {
            self.i += 1;
        }
        Ok(ClassAtom::Set(set))
    }
}

/// Write character `cp` so that the engine reads it as that literal, in or
/// out of a class. Without UTF-8 mode, characters are bytes: those past
/// ASCII are written `\xHH`, which the engine (Unicode off) reads as bytes.
fn push_char(out: &mut String, cp: u32, utf8: bool) {
    match char::from_u32(cp) {
        Some(c) if c.is_ascii_alphanumeric() => out.push(c),
        Some(c) if c.is_ascii_graphic() => {
            if regex_meta(c) {
                out.push('\\');
            }
            out.push(c);
        }
        Some(c) if c.is_ascii() => {
            write!(out, "\\x{cp:02X}").expect("writing to a String");
        }
        Some(c) if utf8 => out.push(c),
        _ => {
            write!(out, "\\x{cp:02X}").expect("writing to a String");
        }
    }
}

/// Characters `regex-syntax` gives a meaning to (all may be escaped).
fn regex_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '.'
            | '+'
            | '*'
            | '?'
            | '('
            | ')'
            | '|'
            | '['
            | ']'
            | '{'
            | '}'
            | '^'
            | '$'
            | '#'
            | '&'
            | '-'
            | '~'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(p: &str) -> Result<String, String> {
        translate(p.as_bytes(), Syntax::default()).map(|t| t.pattern)
    }

    #[test]
    fn translates_pcre_syntax() {
        assert_eq!(tr(r"a{2,3}b{,2}c{").unwrap(), r"a{2,3}b\{,2\}c\{");
        assert_eq!(tr(r"[]a-]").unwrap(), r"[\]a\-]");
        assert_eq!(tr(r"[a&&b~~[]").unwrap(), r"[a\&\&b\~\~\[]");
        assert_eq!(tr(r"\d\w").unwrap(), r"[0-9](?-i:[0-9A-Za-z_])");
        assert_eq!(tr(r"(?<y>\d+)-(?'m'\d+)").unwrap(), r"([0-9]+)\-([0-9]+)");
        assert_eq!(tr("(?x) a b # c\n d").unwrap(), "abd");
        assert_eq!(tr(r"\Qa.b\E+").unwrap(), r"a\.b+");
        assert_eq!(
            tr(r"[[:alpha:][:^digit:]]").unwrap(),
            r"[[:alpha:][:^digit:]]"
        );
        assert_eq!(tr("\u{e9}").unwrap(), r"\xC3\xA9");
    }

    #[test]
    fn refuses_what_needs_backtracking() {
        for (p, what) in [
            (r"(a)\1", "backreferences"),
            (r"(?<n>a)\k<n>", "backreferences"),
            (r"a(?=b)", "lookahead"),
            (r"a(?!b)", "lookahead"),
            (r"(?<=a)b", "lookbehind"),
            (r"(?<!a)b", "lookbehind"),
            (r"(?>a+)b", "atomic"),
            (r"a*+b", "possessive"),
            (r"a{2}+", "possessive"),
            (r"(a|(?R))", "recursion"),
            (r"(a)(?1)", "recursion"),
            (r"a\Kb", "\\K"),
            (r"(?(1)a|b)", "conditional"),
            (r"(*SKIP)a", "verbs"),
        ] {
            let error = tr(p).unwrap_err();
            assert!(error.contains(what), "{p}: {error}");
        }
    }
}
