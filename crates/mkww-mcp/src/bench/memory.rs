//! `mkww-mcp bench memory`: the memory service under a realistic load.
//! 1. load N messages in batches (of `--batch`, one conversation per batch, conversations taken
//!    in turn) with text generated from a Zipf-distributed vocabulary, as natural language is;
//!    the generator runs on its own thread so the figure is the store's insert rate;
//! 2. search: a mix of one-word, two-word and phrase queries (a third each), one at a time,
//!    first page of 20 with snippets, and report latency p50/p95/p99.
//!
//! Query words are drawn with the same Zipf law from the vocabulary minus its 100 most frequent
//! words (which play the part of function words people do not search for): most queries hit a
//! few hundred messages, the commonest ones tens of thousands. Phrases are two adjacent words of
//! a generated message (both outside the 100 commonest), so every phrase query has hits.
//!
//! It runs against a fresh SQLite file or a fresh PostgreSQL schema, dropped afterwards.

use super::scratch::BenchStore;
use super::{percentile, quiet_logging};
use chrono::{Duration as Span, Utc};
use mcp_core::memory::{
    Conversation, Message, MessageRole, SearchQuery, SearchRequest, estimate_tokens,
};
use mcp_persistence::SqliteOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct MemoryBench {
    /// PostgreSQL URL (postgres://…); default: a temporary SQLite file.
    #[arg(long, env = "MCP_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Messages loaded.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Messages per insert batch.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Batches written at once (PostgreSQL turns each into its own backend; SQLite's single
    /// writer takes them in turn).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Conversations the messages are spread over.
    #[arg(long, default_value_t = 1_000)]
    conversations: usize,
    /// Distinct words of the vocabulary.
    #[arg(long, default_value_t = 50_000)]
    vocabulary: usize,
    /// Zipf exponent of word frequencies (about 1 for natural language).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Search queries measured (after 10% as many to warm up).
    #[arg(long, default_value_t = 600)]
    queries: usize,
    /// Hits per search page.
    #[arg(long, default_value_t = 20)]
    page: u32,
    /// Seed of the generator (the same seed loads the same text).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Leave the loaded SQLite file or PostgreSQL schema in place (and say where), to study
    /// queries on it by hand.
    #[arg(long)]
    keep: bool,
}

/// What the memory bench reports of its store besides the figures.
impl BenchStore {
    fn describe_memory(&self) -> String {
        match self {
            BenchStore::Sqlite(..) => "sqlite (WAL, synchronous=NORMAL, FTS5 porter)".into(),
            BenchStore::Postgres(store) => {
                format!("postgres (schema {}, tsvector + GIN)", store.schema())
            }
        }
    }

    /// Bytes on disk: the SQLite file and its WAL, or the PostgreSQL tables and indexes.
    async fn size(&self) -> Option<u64> {
        match self {
            BenchStore::Sqlite(_, dir) => std::fs::read_dir(dir).ok().map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            }),
            BenchStore::Postgres(store) => store.memory_bytes().await.ok(),
        }
    }

    /// Brings the planner statistics up to date, as autovacuum would after a bulk load.
    async fn settle(&self) -> anyhow::Result<()> {
        match self {
            BenchStore::Sqlite(..) => {}
            BenchStore::Postgres(store) => store.vacuum_memory().await?,
        }
        Ok(())
    }
}

/// The most frequent words, which queries leave out (the part function words play in English).
const COMMON_WORDS: usize = 100;

/// Words with Zipf-distributed frequencies: rank r is drawn with weight 1 / r^s.
struct Zipf {
    words: Vec<String>,
    ranks: std::collections::HashMap<String, usize>,
    /// Cumulative weights, normalised to end at 1.
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(rng: &mut StdRng, size: usize, exponent: f64) -> Zipf {
        const ONSETS: &[&str] = &[
            "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
            "z", "br", "ch", "cl", "dr", "fl", "gr", "pl", "sh", "st", "th", "tr",
        ];
        const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"];
        const CODAS: &[&str] = &["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"];
        let mut seen = std::collections::HashSet::new();
        let mut words = Vec::with_capacity(size);
        while words.len() < size {
            // Frequent words are short, as in natural language.
            let syllables = 1
                + (words.len() > 100) as usize
                + (words.len() > 3_000) as usize
                + rng.random_range(0..2);
            let mut word = String::new();
            for _ in 0..syllables {
                word.push_str(ONSETS[rng.random_range(0..ONSETS.len())]);
                word.push_str(VOWELS[rng.random_range(0..VOWELS.len())]);
                word.push_str(CODAS[rng.random_range(0..CODAS.len())]);
            }
            if seen.insert(word.clone()) {
                words.push(word);
            }
        }
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=size)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        for c in &mut cumulative {
            *c /= total;
        }
        let ranks = words
            .iter()
            .enumerate()
            .map(|(r, w)| (w.clone(), r))
            .collect();
        Zipf {
            words,
            ranks,
            cumulative,
        }
    }

    fn rank(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cumulative
            .partition_point(|&c| c < u)
            .min(self.words.len() - 1)
    }

    fn word(&self, rng: &mut StdRng) -> &str {
        &self.words[self.rank(rng)]
    }

    /// A word for a query: the same law, without the 100 commonest words.
    fn query_word(&self, rng: &mut StdRng) -> &str {
        loop {
            let rank = self.rank(rng);
            if rank >= COMMON_WORDS.min(self.words.len() - 1) {
                return &self.words[rank];
            }
        }
    }

    /// Two adjacent words of `text` (in one sentence), both searchable by `query_word`'s rule,
    /// as a phrase query.
    fn phrase_in(&self, text: &str) -> Option<String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        words.windows(2).find_map(|pair| {
            if pair[0].ends_with(['.', ',', '?', '!']) {
                return None;
            }
            let clean = |w: &str| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            };
            let (a, b) = (clean(pair[0]), clean(pair[1]));
            let searchable = |w: &str| self.ranks.get(w).is_some_and(|&r| r >= COMMON_WORDS);
            (searchable(&a) && searchable(&b)).then(|| format!("\"{a} {b}\""))
        })
    }

    /// A message of 3 to 60 words in sentences.
    fn text(&self, rng: &mut StdRng) -> String {
        let n = rng.random_range(3..=60);
        let mut text = String::with_capacity(n * 7);
        let mut capital = true;
        for i in 0..n {
            let word = self.word(rng);
            if i > 0 {
                text.push(' ');
            }
            if capital {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    text.extend(first.to_uppercase());
                    text.push_str(chars.as_str());
                }
                capital = false;
            } else {
                text.push_str(word);
            }
            if i + 1 == n || rng.random_ratio(1, 12) {
                text.push(['.', '.', '.', '?', '!'][rng.random_range(0..5)]);
                capital = true;
            } else if rng.random_ratio(1, 15) {
                text.push(',');
            }
        }
        text
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    OneWord,
    TwoWords,
    Phrase,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::OneWord => "one word",
            Kind::TwoWords => "two words",
            Kind::Phrase => "phrase",
        }
    }
}

pub async fn run(args: MemoryBench) -> anyhow::Result<()> {
    quiet_logging();
    anyhow::ensure!(
        args.batch > 0 && args.conversations > 0,
        "batch and conversations must be at least 1"
    );
    anyhow::ensure!(
        args.vocabulary >= 200,
        "the vocabulary needs at least 200 words"
    );
    let backing = BenchStore::open(args.database_url.as_deref(), &SqliteOptions::default()).await?;
    let outcome = measure(&args, &backing).await;
    if args.keep {
        println!("kept: {}", backing.location());
    } else {
        backing.cleanup().await;
    }
    outcome
}

async fn measure(args: &MemoryBench, backing: &BenchStore) -> anyhow::Result<()> {
    let store = backing.memory();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let zipf = Arc::new(Zipf::new(&mut rng, args.vocabulary, args.zipf));
    println!(
        "memory bench: {} messages in batches of {} over {} conversations, {}-word Zipf({}) \
         vocabulary, on {}",
        args.messages,
        args.batch,
        args.conversations,
        args.vocabulary,
        args.zipf,
        backing.describe_memory()
    );

    let start = Utc::now() - Span::days(30);
    let mut conversations = Vec::with_capacity(args.conversations);
    for i in 0..args.conversations {
        let conversation = Conversation {
            id: Uuid::now_v7(),
            title: Some(format!("bench {i}")),
            participants: vec![format!("user{}", i % 200), "bot".into()],
            metadata: json!({}),
            archived: false,
            summary: None,
            created_by: Some("bench".into()),
            created_at: start,
            updated_at: start,
        };
        store.create_conversation(&conversation, None).await?;
        conversations.push(conversation.id);
    }

    // The generator thread makes batches ahead of the writer (a bounded queue of 4).
    let (tx, rx) = tokio::sync::mpsc::channel::<(Uuid, Vec<Message>)>(4);
    let generator = {
        let zipf = zipf.clone();
        let conversations = conversations.clone();
        let (total, batch, seed) = (args.messages, args.batch, args.seed);
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
            let step = 30 * 24 * 3_600_000_000 / total.max(1) as i64;
            let mut made = 0usize;
            let mut turn = 0usize;
            while made < total {
                let conversation_id = conversations[turn % conversations.len()];
                turn += 1;
                let n = batch.min(total - made);
                let messages = (0..n)
                    .map(|i| {
                        let content = zipf.text(&mut rng);
                        let assistant = rng.random_ratio(1, 3);
                        Message {
                            id: Uuid::now_v7(),
                            conversation_id,
                            author: if assistant {
                                "bot".into()
                            } else {
                                format!("user{}", rng.random_range(0..200))
                            },
                            role: if assistant {
                                MessageRole::Assistant
                            } else {
                                MessageRole::User
                            },
                            tokens: estimate_tokens(&content),
                            content,
                            metadata: json!({}),
                            pinned: false,
                            created_at: start + Span::microseconds(step * (made + i) as i64),
                            created_by: Some("bench".into()),
                        }
                    })
                    .collect();
                made += n;
                if tx.blocking_send((conversation_id, messages)).is_err() {
                    return;
                }
            }
        })
    };

    let began = Instant::now();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..args.writers.max(1) {
        let (rx, store, zipf) = (rx.clone(), store.clone(), zipf.clone());
        writers.spawn(async move {
            let mut phrases: Vec<String> = Vec::new();
            let mut batch_ms = Vec::new();
            let mut inserted = 0usize;
            loop {
                let Some((conversation_id, messages)) = rx.lock().await.recv().await else {
                    break;
                };
                // Keep a few adjacent word pairs for phrase queries.
                if phrases.len() < 5_000
                    && let Some(m) = messages.first()
                    && let Some(phrase) = zipf.phrase_in(&m.content)
                {
                    phrases.push(phrase);
                }
                let at = messages.last().map_or_else(Utc::now, |m| m.created_at);
                let t = Instant::now();
                store
                    .append_messages(conversation_id, &messages, at, None)
                    .await?;
                batch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                inserted += messages.len();
            }
            anyhow::Ok((inserted, phrases, batch_ms))
        });
    }
    let mut inserted = 0usize;
    let mut phrases: Vec<String> = Vec::new();
    let mut batch_ms = Vec::new();
    while let Some(done) = writers.join_next().await {
        let (n, p, b) = done??;
        inserted += n;
        phrases.extend(p);
        batch_ms.extend(b);
    }
    let _ = generator.join();
    let insert_secs = began.elapsed().as_secs_f64();
    let rate = inserted as f64 / insert_secs;
    batch_ms.sort_by(f64::total_cmp);
    println!(
        "insert: {inserted} messages in {insert_secs:.1} s = {rate:.0} messages/s \
         ({} writers; batch of {}: p50 {:.1} ms, p99 {:.1} ms)",
        args.writers.max(1),
        args.batch,
        percentile(&batch_ms, 50.0),
        percentile(&batch_ms, 99.0)
    );
    backing.settle().await?;
    if let Some(bytes) = backing.size().await {
        println!(
            "size on disk: {:.0} MB ({:.0} bytes per message)",
            bytes as f64 / 1e6,
            bytes as f64 / inserted.max(1) as f64
        );
    }

    // The query mix, fixed before measuring.
    let mut queries = Vec::new();
    let total = args.queries + args.queries / 10;
    for i in 0..total {
        let kind = [Kind::OneWord, Kind::TwoWords, Kind::Phrase][i % 3];
        let text = match kind {
            Kind::OneWord => zipf.query_word(&mut rng).to_owned(),
            Kind::TwoWords => format!(
                "{} {}",
                zipf.query_word(&mut rng),
                zipf.query_word(&mut rng)
            ),
            Kind::Phrase if !phrases.is_empty() => {
                phrases[rng.random_range(0..phrases.len())].clone()
            }
            Kind::Phrase => zipf.query_word(&mut rng).to_owned(),
        };
        queries.push((kind, text));
    }
    let (warm, measured) = queries.split_at(args.queries / 10);
    let request = |text: &str| -> anyhow::Result<SearchRequest> {
        Ok(SearchRequest {
            query: SearchQuery::parse(text).map_err(|e| anyhow::anyhow!("{text}: {e}"))?,
            conversation_id: None,
            author: None,
            role: None,
            since: None,
            until: None,
            offset: 0,
            limit: args.page,
        })
    };
    for (_, text) in warm {
        store.search(&request(text)?).await?;
    }
    let mut all = Vec::new();
    let mut by_kind: Vec<(Kind, Vec<f64>, usize)> = [Kind::OneWord, Kind::TwoWords, Kind::Phrase]
        .into_iter()
        .map(|k| (k, Vec::new(), 0))
        .collect();
    for (kind, text) in measured {
        let request = request(text)?;
        let t = Instant::now();
        let hits = store.search(&request).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        all.push(ms);
        if let Some(entry) = by_kind.iter_mut().find(|(k, ..)| k == kind) {
            entry.1.push(ms);
            entry.2 += hits.len();
        }
    }
    all.sort_by(f64::total_cmp);
    println!(
        "search ({} queries, first page of {} with snippets, one at a time):",
        measured.len(),
        args.page
    );
    for (kind, mut times, hits) in by_kind {
        times.sort_by(f64::total_cmp);
        println!(
            "  {:<10} p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  \
             ({:.1} hits per page)",
            kind.name(),
            percentile(&times, 50.0),
            percentile(&times, 95.0),
            percentile(&times, 99.0),
            times.last().copied().unwrap_or(f64::NAN),
            hits as f64 / times.len().max(1) as f64
        );
    }
    println!(
        "  {:<10} p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        "all",
        percentile(&all, 50.0),
        percentile(&all, 95.0),
        percentile(&all, 99.0),
        all.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "{}",
        json!({
            "messages": inserted,
            "insert_per_second": rate.round(),
            "search_ms": {
                "p50": percentile(&all, 50.0),
                "p95": percentile(&all, 95.0),
                "p99": percentile(&all, 99.0),
            },
        })
    );
    Ok(())
}
