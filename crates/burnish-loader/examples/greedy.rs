//! Greedy decoding with the KV cache from a Llama-family directory:
//! `cargo run --release -p burnish-loader --example greedy -- DIR "prompt" [N]`.
//! Prints the prompt ids, the generated ids and the text, to compare with transformers'
//! `generate(do_sample=False)`.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_ndarray::NdArray;
use burnish_loader::{HfModelDir, LoadError, LoadOptions, TokenizerConfig};
use burnish_models::KvCache;

type B = NdArray;

fn main() -> Result<(), LoadError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(prompt)) = (args.first(), args.get(1)) else {
        eprintln!("usage: greedy DIR PROMPT [N]");
        std::process::exit(2);
    };
    let steps: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(20);
    let dir = HfModelDir::open(&PathBuf::from(dir))?;
    let tokenizer = dir.tokenizer(TokenizerConfig::default())?;
    let start = Instant::now();
    let (model, _) = dir.load_llama::<B>(&Default::default(), &LoadOptions::default())?;
    println!("loaded in {:.2?}", start.elapsed());
    let encoded = tokenizer.encode_batch(&[prompt.as_str()])?;
    println!("prompt ids: {:?}", encoded.input_ids);
    let device = Default::default();
    let mut input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(encoded.input_ids.clone(), encoded.shape),
        &device,
    );
    let mut cache = KvCache::new();
    let mut generated: Vec<u32> = Vec::new();
    let start = Instant::now();
    for _ in 0..steps {
        let logits = model.forward(input, None, Some(&mut cache));
        let [_, s, v] = logits.dims();
        let next: i64 = logits
            .slice([0..1, s - 1..s, 0..v])
            .reshape([v])
            .argmax(0)
            .into_scalar()
            .elem();
        generated.push(next as u32);
        input = Tensor::from_data(TensorData::new(vec![next], [1, 1]), &device);
    }
    println!("generated ids: {generated:?} ({:.2?})", start.elapsed());
    println!("text: {prompt}{}", tokenizer.decode(&generated)?);
    Ok(())
}
