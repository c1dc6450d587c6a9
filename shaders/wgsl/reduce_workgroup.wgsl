// Row reductions without subgroups: a binary tree in workgroup memory (log2(REDUCE_WG) barriers).
// Kernels that use these run with @workgroup_size(REDUCE_WG) and call them from uniform control flow.

struct Lane {
    @builtin(local_invocation_index) index: u32,
}

var<workgroup> reduce_scratch: array<f32, REDUCE_WG>;

fn workgroup_sum(value: f32, lane: Lane) -> f32 {
    reduce_scratch[lane.index] = value;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride = stride / 2u) {
        if lane.index < stride {
            reduce_scratch[lane.index] += reduce_scratch[lane.index + stride];
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    // The next reduction overwrites the scratch: everyone must have read the total first.
    workgroupBarrier();
    return total;
}

fn workgroup_max(value: f32, lane: Lane) -> f32 {
    reduce_scratch[lane.index] = value;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride = stride / 2u) {
        if lane.index < stride {
            reduce_scratch[lane.index] = max(reduce_scratch[lane.index], reduce_scratch[lane.index + stride]);
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}

// Teams: the unit that cooperates on one row of a small reduction. Without subgroups every thread
// is a team of one (it loops over the row alone); with subgroups a team is a subgroup.
fn team_index(lane: Lane) -> u32 {
    return lane.index;
}

fn team_count(lane: Lane, workgroup_threads: u32) -> u32 {
    return workgroup_threads;
}

fn member_index(lane: Lane) -> u32 {
    return 0u;
}

fn member_count(lane: Lane) -> u32 {
    return 1u;
}

fn team_sum(value: f32) -> f32 {
    return value;
}

fn team_max(value: f32) -> f32 {
    return value;
}
