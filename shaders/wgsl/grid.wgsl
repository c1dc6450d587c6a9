// The kernel side of launch::grid: the host splits a long 1-D dispatch over x and y so that neither
// exceeds the per-dimension limit; this recovers the flat workgroup index. Prepended to every family.
fn grid_workgroup(wg: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wg.x + wg.y * groups.x;
}
