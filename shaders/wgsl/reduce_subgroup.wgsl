// Row reductions with subgroups: one subgroup operation, then the per-subgroup partials combined
// through workgroup memory (two barriers). Works for any subgroup size: the subgroup index and
// count come from the builtins, never from an assumed width.

struct Lane {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_size) subgroup_size: u32,
}

var<workgroup> reduce_scratch: array<f32, REDUCE_WG>;

fn workgroup_sum(value: f32, lane: Lane) -> f32 {
    let partial = subgroupAdd(value);
    if lane.subgroup_lane == 0u {
        reduce_scratch[lane.subgroup] = partial;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < lane.subgroups; i++) {
        total += reduce_scratch[i];
    }
    workgroupBarrier();
    return total;
}

fn workgroup_max(value: f32, lane: Lane) -> f32 {
    let partial = subgroupMax(value);
    if lane.subgroup_lane == 0u {
        reduce_scratch[lane.subgroup] = partial;
    }
    workgroupBarrier();
    var total = reduce_scratch[0];
    for (var i = 1u; i < lane.subgroups; i++) {
        total = max(total, reduce_scratch[i]);
    }
    workgroupBarrier();
    return total;
}

// Teams: the unit that cooperates on one row of a small reduction; here a subgroup, whose lanes
// split the row and combine with one subgroup operation. Call team_* from subgroup-uniform flow.
fn team_index(lane: Lane) -> u32 {
    return lane.subgroup;
}

fn team_count(lane: Lane, workgroup_threads: u32) -> u32 {
    return lane.subgroups;
}

fn member_index(lane: Lane) -> u32 {
    return lane.subgroup_lane;
}

fn member_count(lane: Lane) -> u32 {
    return lane.subgroup_size;
}

fn team_sum(value: f32) -> f32 {
    return subgroupAdd(value);
}

fn team_max(value: f32) -> f32 {
    return subgroupMax(value);
}
