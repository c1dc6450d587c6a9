//! Static counts read from naga's IR of one entry point (after its overrides are applied): barriers,
//! workgroup memory, and the workgroup-memory traffic of the innermost loops that do the FMAs.
//!
//! These are the proxies that transfer from a CPU machine to a GPU (GPU.md, "Measuring without a
//! GPU"): a barrier stalls the whole workgroup, and words read from workgroup memory per FMA bound a
//! register-blocked GEMM's inner loop (LDS bandwidth, not the FMA units, is then the ceiling).

use std::collections::{HashMap, HashSet};

use naga::valid::{FunctionInfo, ModuleInfo};
use naga::{
    AddressSpace, Arena, BinaryOperator, Block, Expression, Function, Handle, MathFunction, Module, Statement,
    UnaryOperator,
};

/// The counts of one entry point.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticCounts {
    /// Workgroup (and storage) control barriers on the entry point's code, a `workgroupUniformLoad`
    /// counted as one, each call site of a function counted with the barriers of that function:
    /// barrier sites, not barriers executed.
    pub barriers: u32,
    /// Barrier sites per key tile of an attention machinery (its `attend_tile` and the
    /// `release_key_table` its callers run before refilling the tile's key table), where the entry
    /// point streams key tiles: the barriers that repeat with the keys.
    pub tile_barriers: Option<u32>,
    /// Bytes of the workgroup variables the entry point uses.
    pub workgroup_bytes: u32,
    /// The innermost loops that both read workgroup memory and do FMAs (GEMM-like inner loops),
    /// counted with the functions they call; a square (a norm's `dot(x, x)`) is no FMA here.
    pub inner_loops: Vec<InnerLoop>,
}

/// One iteration of an innermost loop: workgroup-memory words (4 bytes) loaded and FMAs (a float
/// `a * b + c` or `fma`, per component) done.
#[derive(Debug, Clone, PartialEq)]
pub struct InnerLoop {
    pub function: String,
    pub words: f64,
    pub fmas: u32,
}

impl InnerLoop {
    pub fn words_per_fma(&self) -> f64 {
        self.words / f64::from(self.fmas)
    }
}

/// Functions whose loops run once per workgroup, after its K loop: the attention machinery's merges
/// of its key slices' softmax states (attention_tile.wgsl). They read workgroup memory and multiply,
/// but they are epilogues, not the GEMM-like inner loops whose words per FMA the counts describe.
const ONCE_PER_BLOCK: [&str; 2] = ["merge_key_slices", "merge_staged_key_slices"];

/// The counts of entry point `index` of a module whose overrides are already processed.
pub fn count(module: &Module, info: &ModuleInfo, index: usize) -> StaticCounts {
    let entry = &module.entry_points[index];
    let entry_info = info.get_entry_point(index);

    let workgroup_bytes = module
        .global_variables
        .iter()
        .filter(|&(handle, var)| var.space == AddressSpace::WorkGroup && !entry_info[handle].is_empty())
        .map(|(_, var)| module.types[var.ty].inner.size(module.to_ctx()))
        .sum();

    let mut counter = Barriers { module, memo: HashMap::new() };
    let barriers = counter.block(&entry.function, &entry.function.body);

    // Every function the entry point reaches, once; the entry point's own body first.
    let mut reached = Vec::new();
    calls(module, &entry.function, &entry.function.body, &mut HashSet::new(), &mut reached);
    let named = |name: &str| reached.iter().copied().find(|&h| module.functions[h].name.as_deref() == Some(name));
    let tile_barriers = named("attend_tile").map(|tile| {
        [Some(tile), named("release_key_table")]
            .into_iter()
            .flatten()
            .map(|handle| counter.block(&module.functions[handle], &module.functions[handle].body))
            .sum()
    });
    let mut inner_loops = Vec::new();
    let name = entry.name.clone();
    let loops = Loops { module, info };
    loops.innermost(&entry.function, entry_info, &name, &entry.function.body, &mut inner_loops);
    for handle in reached {
        let function = &module.functions[handle];
        let name = function.name.clone().unwrap_or_default();
        if !ONCE_PER_BLOCK.contains(&name.as_str()) {
            loops.innermost(function, &info[handle], &name, &function.body, &mut inner_loops);
        }
    }
    StaticCounts { barriers, tile_barriers, workgroup_bytes, inner_loops }
}

/// The statements of `block` that can run, in order: a branch on a constant (an override naga
/// folded, as `if KV_SPLIT > 1u`, or a bool override such as `if SUBGROUP_EXCHANGE`) replaced by the
/// statements of the side that runs, and nothing after a return, also one at the end of such a side
/// (as `if SUBGROUP_EXCHANGE { return lanes_sum(..); }` skips the workgroup exchange below it).
fn live<'a>(module: &Module, function: &Function, block: &'a Block) -> Vec<&'a Statement> {
    let mut out = Vec::new();
    live_into(module, function, block, &mut out);
    out
}

/// Appends `block`'s live statements to `out`; true where the block ends in a return.
fn live_into<'a>(module: &Module, function: &Function, block: &'a Block, out: &mut Vec<&'a Statement>) -> bool {
    for statement in block.iter() {
        if let Statement::If { condition, accept, reject } = statement
            && let Some(taken) = constant_bool(module, &function.expressions, *condition)
        {
            if live_into(module, function, if taken { accept } else { reject }, out) {
                return true;
            }
            continue;
        }
        out.push(statement);
        if matches!(statement, Statement::Return { .. }) {
            return true;
        }
    }
    false
}

/// The value of a boolean expression that is constant after the overrides are processed: a literal,
/// a constant (what a bool override becomes; naga leaves `if SUBGROUP_EXCHANGE` reading it rather
/// than folding it to a literal), or the negation of either.
fn constant_bool(module: &Module, arena: &Arena<Expression>, expression: Handle<Expression>) -> Option<bool> {
    match arena[expression] {
        Expression::Literal(naga::Literal::Bool(value)) => Some(value),
        Expression::Constant(constant) => {
            constant_bool(module, &module.global_expressions, module.constants[constant].init)
        }
        Expression::Unary { op: UnaryOperator::LogicalNot, expr } => constant_bool(module, arena, expr).map(|v| !v),
        _ => None,
    }
}

struct Barriers<'a> {
    module: &'a Module,
    memo: HashMap<Handle<Function>, u32>,
}

impl Barriers<'_> {
    fn block(&mut self, function: &Function, block: &Block) -> u32 {
        live(self.module, function, block).into_iter().map(|statement| self.statement(function, statement)).sum()
    }

    fn statement(&mut self, function: &Function, statement: &Statement) -> u32 {
        match statement {
            // A subgroup-only barrier does not stall the workgroup.
            Statement::ControlBarrier(flags) => u32::from(*flags != naga::Barrier::SUB_GROUP),
            // workgroupUniformLoad is a workgroup barrier on either side of the load (WGSL spec).
            Statement::WorkGroupUniformLoad { .. } => 1,
            Statement::Call { function: callee, .. } => {
                if let Some(&n) = self.memo.get(callee) {
                    return n;
                }
                let body = &self.module.functions[*callee];
                let n = self.block(body, &body.body);
                self.memo.insert(*callee, n);
                n
            }
            Statement::Block(b) => self.block(function, b),
            Statement::If { accept, reject, .. } => self.block(function, accept) + self.block(function, reject),
            Statement::Switch { cases, .. } => cases.iter().map(|c| self.block(function, &c.body)).sum(),
            Statement::Loop { body, continuing, .. } => self.block(function, body) + self.block(function, continuing),
            _ => 0,
        }
    }
}

/// The blocks nested directly in `statement` (not through calls).
fn children(statement: &Statement) -> Vec<&Block> {
    match statement {
        Statement::Block(b) => vec![b],
        Statement::If { accept, reject, .. } => vec![accept, reject],
        Statement::Switch { cases, .. } => cases.iter().map(|c| &c.body).collect(),
        Statement::Loop { body, continuing, .. } => vec![body, continuing],
        _ => Vec::new(),
    }
}

/// Appends the functions called from `block` of `function`, transitively, each once: only from
/// statements that can run (a function called only on the side of a constant branch that does not,
/// such as the scalar attention's machinery for another ROWS, is not reached).
fn calls(
    module: &Module,
    function: &Function,
    block: &Block,
    seen: &mut HashSet<Handle<Function>>,
    out: &mut Vec<Handle<Function>>,
) {
    for statement in live(module, function, block) {
        if let Statement::Call { function: callee, .. } = statement
            && seen.insert(*callee)
        {
            out.push(*callee);
            let body = &module.functions[*callee];
            calls(module, body, &body.body, seen, out);
        }
        for child in children(statement) {
            calls(module, function, child, seen, out);
        }
    }
}

/// Whether `block` of `function` runs a loop, in its own statements or in a function it calls.
fn runs_loop(module: &Module, function: &Function, block: &Block) -> bool {
    live(module, function, block).into_iter().any(|statement| match statement {
        Statement::Loop { .. } => true,
        Statement::Call { function: callee, .. } => {
            let body = &module.functions[*callee];
            runs_loop(module, body, &body.body)
        }
        _ => children(statement).into_iter().any(|child| runs_loop(module, function, child)),
    })
}

/// Finds the innermost loops of functions: loops that run no loop themselves, also none in a
/// function they call.
struct Loops<'a> {
    module: &'a Module,
    info: &'a ModuleInfo,
}

impl Loops<'_> {
    fn innermost(&self, function: &Function, info: &FunctionInfo, name: &str, block: &Block, out: &mut Vec<InnerLoop>) {
        for statement in live(self.module, function, block) {
            if let Statement::Loop { body, continuing, .. } = statement
                && !runs_loop(self.module, function, body)
                && !runs_loop(self.module, function, continuing)
            {
                let mut tally = Tally { module: self.module, module_info: self.info, words: 0.0, fmas: 0 };
                tally.block(function, info, body);
                tally.block(function, info, continuing);
                if tally.words > 0.0 && tally.fmas > 0 {
                    out.push(InnerLoop { function: name.to_string(), words: tally.words, fmas: tally.fmas });
                }
                continue;
            }
            for child in children(statement) {
                self.innermost(function, info, name, child, out);
            }
        }
    }
}

/// Workgroup words loaded and FMAs done by the expressions a block evaluates (its `Emit` ranges),
/// and by the functions it calls, at every call: a helper that reads a stage for the loop is the
/// loop's traffic (2026-12-04; before, only the loop's own expressions were counted).
struct Tally<'a> {
    module: &'a Module,
    module_info: &'a ModuleInfo,
    words: f64,
    fmas: u32,
}

impl Tally<'_> {
    fn block(&mut self, function: &Function, info: &FunctionInfo, block: &Block) {
        for statement in live(self.module, function, block) {
            match statement {
                Statement::Emit(range) => {
                    for handle in range.clone() {
                        self.expression(function, info, handle);
                    }
                }
                Statement::Call { function: callee, .. } => {
                    let body = &self.module.functions[*callee];
                    self.block(body, &self.module_info[*callee], &body.body);
                }
                _ => {}
            }
            for child in children(statement) {
                self.block(function, info, child);
            }
        }
    }

    fn expression(&mut self, function: &Function, info: &FunctionInfo, handle: Handle<Expression>) {
        let expressions = &function.expressions;
        let components = |handle| float_components(self.module, info, handle);
        match expressions[handle] {
            Expression::Load { pointer } if is_workgroup(self.module, function, pointer) => {
                let bytes = info[handle].ty.inner_with(&self.module.types).size(self.module.to_ctx());
                self.words += f64::from(bytes) / 4.0;
            }
            Expression::Binary { op: BinaryOperator::Add | BinaryOperator::Subtract, left, right }
                if [left, right].iter().any(|&e| is_product(expressions, e)) =>
            {
                self.fmas += components(handle);
            }
            Expression::Math { fun: MathFunction::Fma, arg, arg1: Some(arg1), .. } if arg != arg1 => {
                self.fmas += components(handle);
            }
            Expression::Math { fun: MathFunction::Dot, arg, arg1: Some(arg1), .. } if arg != arg1 => {
                self.fmas += components(arg);
            }
            _ => {}
        }
    }
}

/// Whether `e` multiplies two different values: a square (`x * x`, `dot(x, x)`: a norm's sum of
/// squares) is a reduction of one operand, not a product of two, and no GEMM's FMA.
fn is_product(expressions: &Arena<Expression>, e: Handle<Expression>) -> bool {
    matches!(expressions[e], Expression::Binary { op: BinaryOperator::Multiply, left, right } if left != right)
}

/// Whether `pointer` points into a workgroup variable.
fn is_workgroup(module: &Module, function: &Function, mut pointer: Handle<Expression>) -> bool {
    loop {
        match function.expressions[pointer] {
            Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => pointer = base,
            Expression::GlobalVariable(var) => return module.global_variables[var].space == AddressSpace::WorkGroup,
            _ => return false,
        }
    }
}

fn float_components(module: &Module, info: &FunctionInfo, handle: Handle<Expression>) -> u32 {
    match *info[handle].ty.inner_with(&module.types) {
        naga::TypeInner::Scalar(s) if s.kind == naga::ScalarKind::Float => 1,
        naga::TypeInner::Vector { size, scalar } if scalar.kind == naga::ScalarKind::Float => size as u32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts of `source`'s entry point `main` with its overrides set to `constants`.
    fn counts_of(source: &str, constants: &[(&str, f64)]) -> StaticCounts {
        let module = naga::front::wgsl::parse_str(source).expect("the test shader parses");
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        let info = validator.validate(&module).expect("the test shader validates");
        let constants: naga::back::PipelineConstants = constants.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        let entry = Some((naga::ShaderStage::Compute, "main"));
        let (module, info) =
            naga::back::pipeline_constants::process_overrides(&module, &info, entry, &constants).expect("overrides");
        let index = module.entry_points.iter().position(|e| e.name == "main").expect("main");
        count(&module, &info, index)
    }

    /// Two machineries behind a bool override, as the scalar attention's ROWS selects its own: each
    /// a loop of FMAs over workgroup memory, the wide one with a barrier after it.
    const TWO_MACHINERIES: &str = r#"
override WIDE: bool = false;
var<workgroup> tile: array<f32, 64>;
var<workgroup> slot: u32;

fn narrow_loop(x: f32) -> f32 {
    var acc = x;
    for (var i = 0u; i < 64u; i++) {
        acc += tile[i] * x;
    }
    return acc;
}

fn wide_loop(x: vec4<f32>) -> vec4<f32> {
    var acc = x;
    for (var i = 0u; i < 64u; i++) {
        acc += tile[i] * x;
    }
    workgroupBarrier();
    return acc;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) t: u32) {
    tile[t] = f32(t);
    workgroupBarrier();
    let n = workgroupUniformLoad(&slot);
    if WIDE {
        tile[t] = wide_loop(vec4<f32>(f32(n))).x;
    } else {
        tile[t] = narrow_loop(f32(n));
    }
}
"#;

    #[test]
    fn only_the_machinery_that_runs_is_counted() {
        // The narrow side: its loop alone (1 word per FMA); the wide function's loop and barrier are
        // on the side that does not run.
        let narrow = counts_of(TWO_MACHINERIES, &[]);
        let ratios: Vec<f64> = narrow.inner_loops.iter().map(InnerLoop::words_per_fma).collect();
        assert_eq!(ratios, [1.0], "{narrow:?}");
        // The wide side: 4 FMAs per word, and its barrier.
        let wide = counts_of(TWO_MACHINERIES, &[("WIDE", 1.0)]);
        let ratios: Vec<f64> = wide.inner_loops.iter().map(InnerLoop::words_per_fma).collect();
        assert_eq!(ratios, [0.25], "{wide:?}");
        assert_eq!(wide.barriers, narrow.barriers + 1, "{wide:?}");
    }

    /// A stage read through a helper, a loop that calls a looping helper, and a norm's sum of squares.
    const HELPERS: &str = r#"
var<workgroup> stage: array<vec4<f32>, 64>;

fn staged(i: u32) -> vec4<f32> {
    return stage[i];
}

fn row_sum(x: f32) -> f32 {
    var acc = 0.0;
    for (var i = 0u; i < 4u; i++) {
        acc += stage[i].x * x;
    }
    return acc;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) t: u32) {
    stage[t] = vec4<f32>(f32(t));
    workgroupBarrier();
    let q = vec4<f32>(f32(t));
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < 64u; i++) {
        let k = staged(i);
        acc += q.x * k;
        acc += q.y * k;
    }
    var norm = 0.0;
    for (var i = 0u; i < 64u; i++) {
        let k = stage[i];
        norm += dot(k, k);
    }
    var outer = 0.0;
    for (var i = 0u; i < 2u; i++) {
        outer += row_sum(acc[i]);
    }
    workgroupBarrier();
    stage[t] = acc * norm * outer;
}
"#;

    #[test]
    fn helpers_are_followed_and_squares_are_no_products() {
        let counts = counts_of(HELPERS, &[]);
        let mut loops: Vec<(String, f64)> =
            counts.inner_loops.iter().map(|l| (l.function.clone(), l.words_per_fma())).collect();
        loops.sort_by(|a, b| a.0.cmp(&b.0));
        // main's first loop: the helper's vec4 read (4 words) for 8 FMAs. Its norm loop reads but
        // multiplies nothing by another value. Its outer loop calls a loop, so row_sum's loop is the
        // innermost one: one word (the component loaded) per FMA.
        assert_eq!(loops, [("main".to_string(), 0.5), ("row_sum".to_string(), 1.0)], "{counts:?}");
    }

    #[test]
    fn a_uniform_load_is_a_barrier_site() {
        // The workgroupBarrier and the workgroupUniformLoad.
        assert_eq!(counts_of(TWO_MACHINERIES, &[]).barriers, 2);
    }
}
