use burn::backend::Flex;
use hyperclone_cloning::expand::grow;
use hyperclone_cloning::plan::{rule, ParamKind};
use hyperclone_cloning::*;
use hyperclone_model::{Gpt, GptConfig};
type B = Flex;
fn st(key: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse::<f64>().unwrap() / 1024.0
}
fn reset() { std::fs::write("/proc/self/clear_refs", "5").unwrap(); }
fn main() {
    let device = Default::default();
    let s = GptConfig::gpt2_124m();
    let source = Gpt::<B>::init(&s, 0, &device).unwrap();
    let opts = ExpandOptions::default();
    let tc = expand_config(&s, &opts).unwrap();
    println!("after source rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    reset();
    let shell = Gpt::<B>::zeros(&tc, &device).unwrap();
    println!("after shell rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    reset();
    let r = rule(ParamKind::TokenEmbedding, &s, 2, 2);
    let w = grow("wte", source.wte.weight.val(), &r, &opts).unwrap();
    println!("after wte grow rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    drop(w);
    println!("after wte drop rss {:.0}", st("VmRSS:"));
    reset();
    let r = rule(ParamKind::QkvWeight, &s, 2, 2);
    let w = grow("qkv", source.h[0].attn.c_attn.weight.val(), &r, &opts).unwrap();
    println!("after qkv grow rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    drop(w);
    println!("after qkv drop rss {:.0}", st("VmRSS:"));
    drop(shell);
    println!("after shell drop rss {:.0}", st("VmRSS:"));
    reset();
    let t = expand(&source, &opts).unwrap();
    println!("after expand rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    drop(t);
}
