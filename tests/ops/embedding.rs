//! Embedding gathers, including the NaN rows of ids outside the table.

use crate::common::{Rng, Seeded, Tol, assert_close, dtypes, upload};
use scalewise::ops::{self, reference_values as stored};
use scalewise::{Device, Tensor};

backend_tests! {
    fn embedding_gathers_rows_and_poisons_bad_ids(device: &Device, config: &str) {
        let mut rng = Rng::for_config("embedding", config);
        for dtype in dtypes(device) {
            let (vocab, dim) = (rng.range(2, 300), rng.range(1, 70));
            let table = stored(&rng.vec(vocab * dim, 1.0), dtype);
            let mut ids: Vec<u32> = (0..rng.range(1, 50)).map(|_| rng.range(0, vocab - 1) as u32).collect();
            ids.push(vocab as u32); // out of range: a NaN row
            let tids = Tensor::from_u32(device, &[ids.len()], &ids).unwrap();
            let out = ops::embedding(&tids, &upload(device, &[vocab, dim], &table, dtype)).unwrap();
            assert_eq!(out.shape(), [ids.len(), dim]);
            let want = ops::embedding::reference::embedding(&ids, &table, dim);
            assert_close(
                &out.to_vec_f32().unwrap(),
                &want,
                Tol { atol: 0.0, rtol: 0.0 },
                &format!("{config} {dtype} embedding"),
            );
        }
    }

    fn embedding_channels_first_is_the_gather_transposed(device: &Device, config: &str) {
        let mut rng = Rng::for_config("embedding_channels_first", config);
        for dtype in dtypes(device) {
            let (vocab, dim) = (rng.range(2, 300), rng.range(1, 70));
            let (batch, tokens) = (rng.range(1, 3), rng.range(1, 40));
            let table = stored(&rng.vec(vocab * dim, 1.0), dtype);
            let mut ids: Vec<u32> = (0..batch * tokens).map(|_| rng.range(0, vocab - 1) as u32).collect();
            let bad = rng.range(0, ids.len() - 1);
            ids[bad] = vocab as u32 + 7; // out of range: a NaN column
            let tids = Tensor::from_u32(device, &[batch, tokens], &ids).unwrap();
            let out = ops::embedding_channels_first(&tids, &upload(device, &[vocab, dim], &table, dtype)).unwrap();
            assert_eq!(out.shape(), [batch, dim, tokens]);
            let want = ops::embedding::reference::embedding_channels_first(&ids, tokens, &table, dim);
            assert_close(
                &out.to_vec_f32().unwrap(),
                &want,
                Tol { atol: 0.0, rtol: 0.0 },
                &format!("{config} {dtype} embedding_channels_first b{batch} n{tokens} d{dim}"),
            );
        }
    }
}
