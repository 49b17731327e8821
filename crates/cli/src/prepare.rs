//! `hyperclone prepare`: text → token shards + manifest (see `hyperclone_data::prepare`).

use anyhow::{anyhow, bail, Context, Result};
use hyperclone_data::{
    ensure_prepared, prepare, InputSpec, PrepareOptions, TokenizerSpec, Utf8Policy,
};
use std::path::PathBuf;

/// Tokenize text files, directories, JSONL, parquet or hub datasets into binary token shards
/// with a manifest. Examples and the hub inputs are in [`EXAMPLES`], shown by `--help`.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment, after_help = EXAMPLES)]
pub struct PrepareArgs {
    /// Training inputs: text files, directories (their .txt/.md/.jsonl/.parquet files,
    /// recursively), JSONL or parquet files, or hub datasets `hf:owner/name[@rev]` (with
    /// --files). Replace the config's `train` when given with --config.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Validation inputs (repeatable), same forms. Without any, --val-fraction of the training
    /// tokens is held out.
    #[arg(long = "val", value_name = "INPUT")]
    pub val: Vec<PathBuf>,

    /// Files of the hf: inputs to read: glob patterns over the repo's paths (`*` and `?` within a
    /// path segment, `**` across segments), repeatable or comma-separated; matches are read in
    /// sorted order. Applies to every hf: input.
    #[arg(long, value_name = "PATTERN", value_delimiter = ',')]
    pub files: Vec<String>,

    /// Fraction of the training tokens held out for validation when no --val is given.
    #[arg(long, value_name = "F")]
    pub val_fraction: Option<f64>,

    /// JSON field holding the text in JSONL inputs [default: text].
    #[arg(long, value_name = "NAME")]
    pub jsonl_field: Option<String>,

    /// Column holding the text in parquet inputs (a string column) [default: text].
    #[arg(long, value_name = "NAME")]
    pub parquet_column: Option<String>,

    /// Use this tokenizer.json.
    #[arg(long, value_name = "FILE", group = "tok")]
    pub tokenizer: Option<PathBuf>,

    /// Use GPT-2's tokenizer (shipped, offline; vocab 50257).
    #[arg(long, group = "tok")]
    pub gpt2: bool,

    /// Train a byte-level BPE of this vocabulary size on the training inputs.
    #[arg(long, value_name = "VOCAB", group = "tok")]
    pub train_bpe: Option<usize>,

    /// Use the tokenizer.json of this Hugging Face model repo (cached; HF_HUB_OFFLINE=1 for cache only).
    #[arg(long, value_name = "REPO", group = "tok")]
    pub hub_tokenizer: Option<String>,

    /// Revision (branch, tag or commit) for --hub-tokenizer.
    #[arg(
        long,
        value_name = "REV",
        default_value = "main",
        requires = "hub_tokenizer"
    )]
    pub revision: String,

    /// Output directory (written atomically; an existing prepared directory is replaced).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Worker threads (0 = one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Bytes that are not UTF-8: refuse the input (error) or substitute U+FFFD and count (replace).
    #[arg(long, value_name = "POLICY", value_parser = ["error", "replace"])]
    pub invalid_utf8: Option<String>,

    /// Tokens per shard file.
    #[arg(long, value_name = "N")]
    pub shard_tokens: Option<u64>,

    /// Read the options from the [data] section of this TOML file; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Prepare again even when the output is up to date.
    #[arg(long)]
    pub force: bool,
}

/// Shown after the options by `hyperclone prepare --help`.
const EXAMPLES: &str = "\
Examples:
  hyperclone prepare datasets/gutenberg/train --val datasets/gutenberg/val \\
      --tokenizer datasets/gutenberg/tokenizer-4096.json --out runs/data/gutenberg-4096
  hyperclone prepare corpus.jsonl --jsonl-field body --train-bpe 8192 --out runs/data/mine
  hyperclone prepare shards/ --parquet-column content --gpt2 --out runs/data/web
  hyperclone prepare hf:HuggingFaceFW/fineweb-edu@main \\
      --files 'sample/10BT/000_00000.parquet' --gpt2 --out runs/data/fineweb-edu-000

Hub inputs hf:owner/name[@revision] (revision default main) read the repo's files matching
--files; they are downloaded into the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub) on first use, which needs network; with HF_HUB_OFFLINE=1 only that
cache is used.";

/// Prefix of hub dataset inputs on the command line.
const HUB_PREFIX: &str = "hf:";

impl PrepareArgs {
    /// An input as given on the command line: `hf:owner/name[@rev]` (the files chosen by
    /// --files) or a path.
    fn input_spec(&self, arg: &std::path::Path) -> Result<InputSpec> {
        let Some(hub) = arg.to_str().and_then(|s| s.strip_prefix(HUB_PREFIX)) else {
            return Ok(InputSpec::Path(arg.to_path_buf()));
        };
        let (repo, revision) = hub.split_once('@').unwrap_or((hub, "main"));
        if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) || revision.is_empty()
        {
            bail!(
                "hub input {}: expected hf:owner/name or hf:owner/name@revision",
                arg.display()
            );
        }
        if self.files.is_empty() {
            bail!(
                "hub input {}: choose its files with --files PATTERN (e.g. --files 'data/*.parquet')",
                arg.display()
            );
        }
        Ok(InputSpec::HubFiles {
            hub: repo.to_string(),
            files: self.files.clone(),
            revision: revision.to_string(),
        })
    }

    fn input_specs(&self, args: &[PathBuf]) -> Result<Vec<InputSpec>> {
        args.iter().map(|a| self.input_spec(a)).collect()
    }

    fn tokenizer_spec(&self) -> Option<TokenizerSpec> {
        if let Some(p) = &self.tokenizer {
            Some(TokenizerSpec::File(p.clone()))
        } else if self.gpt2 {
            Some(TokenizerSpec::Gpt2)
        } else if let Some(v) = self.train_bpe {
            Some(TokenizerSpec::TrainBpe { vocab_size: v })
        } else {
            self.hub_tokenizer.as_ref().map(|repo| TokenizerSpec::Hub {
                repo: repo.clone(),
                revision: self.revision.clone(),
                file: "tokenizer.json".into(),
            })
        }
    }

    /// The options these arguments describe (config file first, then the flags over it).
    pub fn to_options(&self) -> Result<PrepareOptions> {
        let mut opts = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow!("reading config {}: {e}", path.display()))?;
                let doc: toml::Table = toml::from_str(&text)
                    .map_err(|e| anyhow!("parsing config {}: {e}", path.display()))?;
                let data = doc
                    .get("data")
                    .cloned()
                    .with_context(|| format!("config {} has no [data] section", path.display()))?;
                data.try_into::<PrepareOptions>().map_err(|e| {
                    anyhow!("config {}: invalid [data] section: {e}", path.display())
                })?
            }
            None => {
                if self.inputs.is_empty() {
                    bail!("give at least one training INPUT (or --config FILE)");
                }
                let Some(tokenizer) = self.tokenizer_spec() else {
                    bail!("choose a tokenizer: --tokenizer FILE, --gpt2, --train-bpe VOCAB or --hub-tokenizer REPO");
                };
                let Some(out) = self.out.clone() else {
                    bail!("give the output directory with --out DIR");
                };
                PrepareOptions::new(Vec::new(), tokenizer, out)
            }
        };
        let is_hub = |a: &PathBuf| a.to_str().is_some_and(|s| s.starts_with(HUB_PREFIX));
        if !self.files.is_empty() && !self.inputs.iter().chain(&self.val).any(is_hub) {
            bail!("--files chooses the files of hf:owner/name inputs; no such input was given");
        }
        if !self.inputs.is_empty() {
            opts.train = self.input_specs(&self.inputs)?;
        }
        if !self.val.is_empty() {
            opts.val = self.input_specs(&self.val)?;
        }
        if let Some(f) = self.val_fraction {
            opts.val_fraction = f;
        }
        if let Some(f) = &self.jsonl_field {
            opts.jsonl_field = f.clone();
        }
        if let Some(c) = &self.parquet_column {
            opts.parquet_column = c.clone();
        }
        if let Some(t) = self.tokenizer_spec() {
            opts.tokenizer = t;
        }
        if let Some(o) = &self.out {
            opts.out = o.clone();
        }
        if let Some(t) = self.threads {
            opts.threads = t;
        }
        if let Some(p) = &self.invalid_utf8 {
            opts.invalid_utf8 = if p == "replace" {
                Utf8Policy::Replace
            } else {
                Utf8Policy::Error
            };
        }
        if let Some(n) = self.shard_tokens {
            opts.shard_tokens = n;
        }
        Ok(opts)
    }
}

/// Runs `hyperclone prepare` and prints a summary of the prepared directory on stdout.
pub fn run(args: PrepareArgs) -> Result<()> {
    let opts = args.to_options()?;
    let data = if args.force {
        prepare(&opts)
    } else {
        ensure_prepared(&opts)
    }
    // The cause on the first line (`{:#}`: the whole chain), not only behind `Caused by:`.
    .map_err(|e| {
        anyhow!(
            "preparing {}: {:#}",
            opts.out.display(),
            anyhow::Error::new(e)
        )
    })?;
    let m = &data.manifest;
    println!("prepared   {}", data.dir.display());
    println!(
        "tokenizer  {:?}  vocab {}  sha256 {}",
        m.tokenizer, m.vocab_size, m.tokenizer_hash
    );
    for (name, split) in [("train", &m.train), ("val", &m.val)] {
        println!(
            "{name:<10} {} tokens in {} shard(s) from {} document(s), {} bytes{}{}",
            split.tokens,
            split.shards.len(),
            split.documents,
            split.bytes,
            split
                .held_out_fraction
                .map(|f| format!(" (last {f} of train)"))
                .unwrap_or_default(),
            if split.replaced_invalid_utf8 > 0 {
                format!(
                    ", {} invalid UTF-8 sequences replaced",
                    split.replaced_invalid_utf8
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: PrepareArgs,
    }

    fn parse(argv: &[&str]) -> Result<PrepareOptions> {
        let mut full = vec!["prepare"];
        full.extend_from_slice(argv);
        Wrapper::try_parse_from(full)?.args.to_options()
    }

    #[test]
    fn flags_make_options() {
        let o = parse(&[
            "a.txt",
            "dir",
            "--val",
            "v.txt",
            "--train-bpe",
            "512",
            "--out",
            "o",
            "--threads",
            "2",
            "--invalid-utf8",
            "replace",
        ])
        .unwrap();
        assert_eq!(
            o.train,
            vec![
                InputSpec::Path("a.txt".into()),
                InputSpec::Path("dir".into())
            ]
        );
        assert_eq!(o.val, vec![InputSpec::Path("v.txt".into())]);
        assert_eq!(o.tokenizer, TokenizerSpec::TrainBpe { vocab_size: 512 });
        assert_eq!(o.threads, 2);
        assert_eq!(o.invalid_utf8, Utf8Policy::Replace);
    }

    #[test]
    fn hub_inputs_with_file_patterns() {
        let o = parse(&[
            "hf:acme/web@v1",
            "local.parquet",
            "--files",
            "data/*.parquet,extra/a.parquet",
            "--files",
            "more/*.parquet",
            "--parquet-column",
            "content",
            "--gpt2",
            "--out",
            "o",
        ])
        .unwrap();
        assert_eq!(
            o.train,
            vec![
                InputSpec::HubFiles {
                    hub: "acme/web".into(),
                    files: vec![
                        "data/*.parquet".into(),
                        "extra/a.parquet".into(),
                        "more/*.parquet".into()
                    ],
                    revision: "v1".into(),
                },
                InputSpec::Path("local.parquet".into()),
            ]
        );
        assert_eq!(o.parquet_column, "content");
        let o = parse(&[
            "hf:acme/web",
            "--files",
            "*.parquet",
            "--gpt2",
            "--out",
            "o",
        ])
        .unwrap();
        assert!(matches!(&o.train[0], InputSpec::HubFiles { revision, .. } if revision == "main"));

        let err = parse(&["hf:acme/web", "--gpt2", "--out", "o"]).unwrap_err();
        assert!(err.to_string().contains("--files"), "{err}");
        let err = parse(&["hf:acme", "--files", "*", "--gpt2", "--out", "o"]).unwrap_err();
        assert!(err.to_string().contains("owner/name"), "{err}");
        let err = parse(&["a.txt", "--files", "*", "--gpt2", "--out", "o"]).unwrap_err();
        assert!(err.to_string().contains("hf:"), "{err}");
    }

    #[test]
    fn two_tokenizers_or_none_are_refused() {
        assert!(parse(&["a.txt", "--gpt2", "--train-bpe", "512", "--out", "o"]).is_err());
        let err = parse(&["a.txt", "--out", "o"]).unwrap_err();
        assert!(err.to_string().contains("tokenizer"), "{err}");
        let err = parse(&["--gpt2", "--out", "o"]).unwrap_err();
        assert!(err.to_string().contains("INPUT"), "{err}");
    }

    #[test]
    fn config_data_section_with_overrides() {
        let cfg = std::env::temp_dir().join(format!("hc-prepare-args-{}.toml", std::process::id()));
        std::fs::write(
            &cfg,
            r#"
[model]
d_model = 128

[data]
train = ["datasets/gutenberg/train"]
val = ["datasets/gutenberg/val"]
tokenizer = { file = "datasets/gutenberg/tokenizer-4096.json" }
out = "runs/data/gutenberg-4096"
threads = 2
"#,
        )
        .unwrap();
        let c = cfg.to_str().unwrap();
        let o = parse(&["--config", c]).unwrap();
        assert_eq!(o.threads, 2);
        assert_eq!(
            o.tokenizer,
            TokenizerSpec::File("datasets/gutenberg/tokenizer-4096.json".into())
        );
        let o = parse(&["--config", c, "--gpt2", "--threads", "1"]).unwrap();
        assert_eq!(o.tokenizer, TokenizerSpec::Gpt2);
        assert_eq!(o.threads, 1);

        std::fs::write(
            &cfg,
            "[data]\ntrain = [\"x\"]\ntokenizer = \"gpt2\"\nout = \"o\"\ntypo = 1\n",
        )
        .unwrap();
        let err = parse(&["--config", c]).unwrap_err();
        let _ = std::fs::remove_file(&cfg);
        assert!(format!("{err:#}").contains("typo"), "{err:#}");
    }
}
