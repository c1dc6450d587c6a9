// The scalar attention machinery's lanes without subgroups (attention_tile.wgsl): a row's threads
// sum their partial scores through workgroup memory (partial_scores), or four rows per thread take
// their scores whole from the staged queries (STAGED_SCORES); never through shuffles.

struct TileInvocation {
    @builtin(local_invocation_index) index: u32,
}

fn tile_thread(tile: TileInvocation) -> u32 {
    return tile.index;
}

// Never called: the host sets SUBGROUP_EXCHANGE only on the subgroups variant (ops::attention), and
// attention_tile.wgsl reaches lanes_sum only under it (ROWS 4 without it stages its scores). It exists so that one machinery source serves both variants; it returns its input unchanged,
// which would be wrong for lanes > 1.
fn lanes_sum(x: vec4<f32>, lanes: u32) -> vec4<f32> {
    return x;
}
