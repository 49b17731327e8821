use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
type B = Flex;
fn st(key: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse::<f64>().unwrap() / 1024.0
}
fn reset() { std::fs::write("/proc/self/clear_refs", "5").unwrap(); }
fn main() {
    let device = Default::default();
    let src: Tensor<B, 2> = Tensor::from_data(TensorData::new(vec![1f32; 50304 * 768], [50304, 768]), &device);
    println!("src rss {:.0}", st("VmRSS:"));
    reset();
    let z: Tensor<B, 2> = Tensor::zeros([50304, 1536], &device);
    println!("zeros rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    reset();
    let z = z.slice_assign([0..50304, 0..768], src.clone());
    println!("assign1 rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    reset();
    let z = z.slice_assign([0..50304, 768..1536], src.clone());
    println!("assign2 rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    let p = Param::from_tensor(z);
    reset();
    let z = p.into_value();
    let z = z.slice_assign([0..50304, 0..768], src.clone());
    println!("from param assign rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    drop(z);
    reset();
    let r = src.clone().repeat_dim(1, 2);
    println!("repeat rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    drop(r);
    reset();
    let r = src.clone().reshape([1, 50304, 1, 768]).expand([1, 50304, 2, 768]).reshape([50304, 1536]);
    println!("expand-reshape rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
    let d = r.clone().narrow(1, 768, 768).sub(src.clone()).abs().sum().into_scalar();
    println!("check {d}");
    drop(r);
    reset();
    let r = Tensor::cat(vec![src.clone(), src.clone()], 1);
    println!("cat rss {:.0} hwm {:.0}", st("VmRSS:"), st("VmHWM:"));
}
