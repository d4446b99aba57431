//! Search queries: the `websearch_to_tsquery` syntax parsed once for both stores, its limits,
//! and snippet rendering.

/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 1_000;
/// Most terms (words and phrases, excluded ones too) in one query.
pub const MAX_QUERY_TERMS: usize = 32;
/// Matches a search ranks: a query matching more messages (a very common word) ranks only its
/// newest `RANKED_MATCHES` matches (after filters), so that its cost is bounded whatever the
/// size of the history. Queries with fewer matches rank them all. Every page of one query ranks
/// the same candidates, so pages never overlap; pages past this depth are empty.
pub const RANKED_MATCHES: u32 = 2_000;

/// A word or a phrase: lower-case words of letters and digits, matched next to each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term(pub Vec<String>);

/// One side of an `or`: every `include` term and none of the `exclude` terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Alternative {
    pub include: Vec<Term>,
    pub exclude: Vec<Term>,
}

/// A parsed search query in the syntax of PostgreSQL's `websearch_to_tsquery`:
/// - words separated by spaces must all occur (`deploy failed`);
/// - `"quoted words"` must occur as a phrase, in order and adjacent;
/// - `-word` or `-"a phrase"` must not occur;
/// - `or` between terms gives alternatives; it binds looser than the implicit AND
///   (`a b or c` is `(a AND b) OR c`), as in PostgreSQL.
///
/// Words are split at every character that is not a letter or digit (`foo-bar` is the phrase
/// `"foo bar"`), which is also how both databases tokenize, and nothing a user types is ever an
/// operator of the database's own query language. Each alternative needs at least one word to
/// find: a query of exclusions only would scan everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub alternatives: Vec<Alternative>,
}

/// Why a query was refused (400 `invalid_search_query`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

enum Token {
    Or,
    Term { exclude: bool, words: Vec<String> },
}

fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn tokenize(query: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = query.chars().peekable();
    loop {
        while chars
            .next_if(|c| c.is_whitespace() || c.is_control())
            .is_some()
        {}
        let Some(&first) = chars.peek() else { break };
        let mut exclude = false;
        if first == '-' {
            chars.next();
            exclude = true;
        }
        let mut text = String::new();
        let quoted = chars.next_if_eq(&'"').is_some();
        if quoted {
            // An unterminated quote runs to the end, as in PostgreSQL.
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                text.push(c);
            }
        } else {
            while let Some(c) =
                chars.next_if(|c| !c.is_whitespace() && !c.is_control() && *c != '"')
            {
                text.push(c);
            }
        }
        if !quoted && !exclude && text.eq_ignore_ascii_case("or") {
            tokens.push(Token::Or);
            continue;
        }
        let words = words_of(&text);
        if !words.is_empty() {
            tokens.push(Token::Term { exclude, words });
        }
    }
    tokens
}

impl SearchQuery {
    pub fn parse(query: &str) -> Result<SearchQuery, QueryError> {
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(QueryError(format!(
                "the query is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let mut alternatives = vec![Alternative::default()];
        let mut terms = 0;
        for token in tokenize(query) {
            match token {
                Token::Or => {
                    if alternatives
                        .last()
                        .is_some_and(|a| *a != Alternative::default())
                    {
                        alternatives.push(Alternative::default());
                    }
                }
                Token::Term { exclude, words } => {
                    terms += 1;
                    let Some(current) = alternatives.last_mut() else {
                        continue;
                    };
                    if exclude {
                        current.exclude.push(Term(words));
                    } else {
                        current.include.push(Term(words));
                    }
                }
            }
        }
        if alternatives
            .last()
            .is_some_and(|a| *a == Alternative::default())
        {
            alternatives.pop();
        }
        if alternatives.is_empty() {
            return Err(QueryError(
                "the query has no words to search for (letters or digits)".into(),
            ));
        }
        if terms > MAX_QUERY_TERMS {
            return Err(QueryError(format!(
                "the query has {terms} terms; at most {MAX_QUERY_TERMS} are allowed"
            )));
        }
        if alternatives.iter().any(|a| a.include.is_empty()) {
            return Err(QueryError(
                "every part of the query (each side of `or`) needs a word to find, not only \
                 `-excluded` ones"
                    .into(),
            ));
        }
        Ok(SearchQuery { alternatives })
    }

    /// The query for PostgreSQL's `websearch_to_tsquery`, every term quoted. Terms hold only
    /// letters, digits and spaces, so nothing in them can act as an operator.
    pub fn to_websearch(&self) -> String {
        let quote = |t: &Term| format!("\"{}\"", t.0.join(" "));
        self.alternatives
            .iter()
            .map(|a| {
                a.include
                    .iter()
                    .map(quote)
                    .chain(a.exclude.iter().map(|t| format!("-{}", quote(t))))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// The query as an SQLite FTS5 `MATCH` expression, every term a quoted string (FTS5's
    /// `AND`, `NEAR`, `*`, `^` and column filters typed by a user are plain words here).
    pub fn to_fts5(&self) -> String {
        let quote = |t: &Term| format!("\"{}\"", t.0.join(" "));
        let group = |terms: &[Term], op: &str| {
            format!("({})", terms.iter().map(quote).collect::<Vec<_>>().join(op))
        };
        self.alternatives
            .iter()
            .map(|a| {
                let include = group(&a.include, " AND ");
                if a.exclude.is_empty() {
                    include
                } else {
                    format!("({include} NOT {})", group(&a.exclude, " OR "))
                }
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// Marks the stores put around matches in a raw snippet (private-use characters, so that they
/// survive HTML escaping and cannot be confused with markup in the text).
pub const SNIPPET_START: char = '\u{E000}';
pub const SNIPPET_END: char = '\u{E001}';

/// A raw snippet as HTML: the text escaped, the marked matches in `<mark>…</mark>`.
pub fn render_snippet(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            SNIPPET_START => out.push_str("<mark>"),
            SNIPPET_END => out.push_str("</mark>"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
