//! A minimal pickle machine for torch.save's `data.pkl`: it builds the objects state dicts are made of
//! and never runs code.
//!
//! Opcodes (protocols 2 to 5): PROTO, FRAME, STOP, MARK, POP, POP_MARK, DUP, NONE, NEWTRUE, NEWFALSE,
//! BININT, BININT1, BININT2, LONG1, LONG4 (up to 64 bits), BINFLOAT, BINUNICODE, SHORT_BINUNICODE,
//! BINUNICODE8, BINSTRING, SHORT_BINSTRING, BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8, EMPTY_DICT,
//! EMPTY_LIST, EMPTY_TUPLE, EMPTY_SET, DICT, LIST, TUPLE, TUPLE1-3, FROZENSET, APPEND, APPENDS, ADDITEMS,
//! SETITEM, SETITEMS, BINPUT, LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET, GLOBAL, STACK_GLOBAL, REDUCE,
//! BUILD, NEWOBJ, NEWOBJ_EX, BINPERSID. Anything else is an error naming the opcode and its offset.
//!
//! Calls (REDUCE): `collections.OrderedDict` / `builtins.dict` make a dict; `torch._utils._rebuild_tensor_v2`
//! and `_rebuild_tensor` make a tensor reference (storage, offset, size, stride);
//! `torch._utils._rebuild_parameter[_with_state]` and `torch._tensor._rebuild_from_type_v2` unwrap to the
//! tensor. Any other call, and NEWOBJ, yields an opaque object named by its callable, so that checkpoints
//! holding extra Python objects (optimizer settings, argparse namespaces) still load their weights; BUILD
//! state is dropped. Persistent ids `('storage', torch.<Type>Storage, key, location, numel)` become storage
//! references.
//!
//! Containers live in arenas and values refer to them by index, so memoised references cost nothing to
//! copy, reference cycles are harmless, and nothing recurses over nesting depth; the work and memory are
//! linear in the pickle's length.

use std::collections::HashMap;
use std::rc::Rc;

/// A storage named by a persistent id.
#[derive(Debug)]
pub(crate) struct StorageRef {
    /// The storage class, e.g. `FloatStorage` (module `torch`), or `module.name` for another module.
    pub class: String,
    /// The record `<root>/data/<key>` holding its bytes.
    pub key: Rc<str>,
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`: a strided view, in elements.
#[derive(Debug)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<u64>,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    // The payloads of bools, floats and bytes are validated and dropped: state dicts never need them.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    /// Index into the machine's sequence arena.
    Tuple(usize),
    /// Index into the machine's sequence arena (lists, sets and frozensets).
    List(usize),
    /// Index into [`Unpickled::maps`] (dicts and OrderedDicts), in insertion order.
    Dict(usize),
    /// A class or function reference, `module.name`.
    Global(Rc<str>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// The result of a call this machine does not model, named by its callable (`module.name`).
    Object(Rc<str>),
}

/// The unpickled object and the containers it refers to.
pub(crate) struct Unpickled {
    pub root: Value,
    maps: Vec<Vec<(Value, Value)>>,
}

impl Unpickled {
    /// The entries of a dict value, in insertion order (duplicates possible: the later one wins).
    pub fn dict(&self, value: &Value) -> Option<&[(Value, Value)]> {
        match value {
            Value::Dict(id) => Some(&self.maps[*id]),
            _ => None,
        }
    }
}

/// What a value is, for error messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::None => "None".into(),
        Value::Bool => "bool".into(),
        Value::Int(_) => "int".into(),
        Value::Float => "float".into(),
        Value::Str(_) => "str".into(),
        Value::Bytes => "bytes".into(),
        Value::Tuple(_) => "tuple".into(),
        Value::List(_) => "list".into(),
        Value::Dict(_) => "dict".into(),
        Value::Global(name) => format!("reference to {name}"),
        Value::Storage(_) => "storage".into(),
        Value::Tensor(_) => "tensor".into(),
        Value::Object(name) => format!("{name} object"),
    }
}

/// Runs the pickle in `data` to its STOP. Errors name the problem and its byte offset.
pub(crate) fn unpickle(data: &[u8]) -> Result<Unpickled, String> {
    let mut vm = Vm {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        seqs: Vec::new(),
        maps: Vec::new(),
        copy_budget: data.len().saturating_mul(2),
    };
    let root = vm.run()?;
    Ok(Unpickled { root, maps: vm.maps })
}

/// Pickle opcodes (CPython's Lib/pickle.py names).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES8: u8 = 0x8e;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_SET: u8 = 0x8f;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const DICT: u8 = b'd';
    pub const LIST: u8 = b'l';
    pub const FROZENSET: u8 = 0x91;
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const ADDITEMS: u8 = 0x90;
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const NEWOBJ: u8 = 0x81;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const BINPERSID: u8 = b'Q';
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    seqs: Vec<Vec<Value>>,
    maps: Vec<Vec<(Value, Value)>>,
    /// Container items the machine may still copy (bounded by the pickle's length).
    copy_budget: usize,
}

fn opcode_name(op: u8) -> String {
    if op.is_ascii_graphic() { format!("0x{op:02x} ('{}')", op as char) } else { format!("0x{op:02x}") }
}

impl<'a> Vm<'a> {
    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(at) else {
                return Err(format!("the pickle ends at byte {at} without a STOP opcode"));
            };
            self.pos += 1;
            match self.step(op) {
                Ok(Some(result)) => return Ok(result),
                Ok(None) => {}
                Err(e) => return Err(format!("pickle opcode {} at byte {at}: {e}", opcode_name(op))),
            }
        }
    }

    /// Executes one opcode; `Some` at STOP.
    fn step(&mut self, op: u8) -> Result<Option<Value>, String> {
        match op {
            op::PROTO => {
                let version = self.u8()?;
                if version > 5 {
                    return Err(format!("unsupported pickle protocol {version}"));
                }
            }
            op::FRAME => {
                // A length prefix for buffering; the opcodes follow inline.
                self.take(8)?;
            }
            op::STOP => return self.pop().map(Some),
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                // A value, or the topmost mark if nothing was pushed after it (as CPython does).
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let top = self.top()?.clone();
                self.stack.push(top);
            }
            op::NONE => self.stack.push(Value::None),
            op::NEWTRUE | op::NEWFALSE => self.stack.push(Value::Bool),
            op::BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            op::BININT1 => {
                let v = self.u8()?;
                self.stack.push(Value::Int(v.into()));
            }
            op::BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            op::LONG1 => {
                let n = self.u8()? as usize;
                let v = self.long(n)?;
                self.stack.push(v);
            }
            op::LONG4 => {
                let n = i32::from_le_bytes(self.array()?);
                let n = usize::try_from(n).map_err(|_| format!("negative length {n}"))?;
                let v = self.long(n)?;
                self.stack.push(v);
            }
            op::BINFLOAT => {
                self.take(8)?;
                self.stack.push(Value::Float);
            }
            op::BINUNICODE => {
                let n = u32::from_le_bytes(self.array()?) as u64;
                self.string(n)?;
            }
            op::SHORT_BINUNICODE => {
                let n = self.u8()? as u64;
                self.string(n)?;
            }
            op::BINUNICODE8 => {
                let n = u64::from_le_bytes(self.array()?);
                self.string(n)?;
            }
            op::BINSTRING => {
                let n = i32::from_le_bytes(self.array()?);
                let n = u64::try_from(n).map_err(|_| format!("negative length {n}"))?;
                self.string(n)?;
            }
            op::SHORT_BINSTRING => {
                let n = self.u8()? as u64;
                self.string(n)?;
            }
            op::BINBYTES => {
                let n = u32::from_le_bytes(self.array()?) as u64;
                self.bytes(n)?;
            }
            op::SHORT_BINBYTES => {
                let n = self.u8()? as u64;
                self.bytes(n)?;
            }
            op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = u64::from_le_bytes(self.array()?);
                self.bytes(n)?;
            }
            op::EMPTY_DICT => {
                let v = self.new_dict(Vec::new());
                self.stack.push(v);
            }
            op::EMPTY_LIST | op::EMPTY_SET => {
                let v = self.new_seq(Vec::new(), false);
                self.stack.push(v);
            }
            op::EMPTY_TUPLE => {
                let v = self.new_seq(Vec::new(), true);
                self.stack.push(v);
            }
            op::DICT => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                let v = self.new_dict(pairs);
                self.stack.push(v);
            }
            op::LIST | op::FROZENSET => {
                let items = self.pop_mark()?;
                let v = self.new_seq(items, false);
                self.stack.push(v);
            }
            op::TUPLE => {
                let items = self.pop_mark()?;
                let v = self.new_seq(items, true);
                self.stack.push(v);
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (op - op::TUPLE1 + 1) as usize;
                let start = self.stack.len().checked_sub(n).ok_or("the stack holds too few values")?;
                self.above_mark(start)?;
                let items = self.stack.split_off(start);
                let v = self.new_seq(items, true);
                self.stack.push(v);
            }
            op::APPEND => {
                let value = self.pop()?;
                self.extend(vec![value])?;
            }
            op::APPENDS | op::ADDITEMS => {
                let items = self.pop_mark()?;
                self.extend(items)?;
            }
            op::SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![(key, value)])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.set_items(pairs)?;
            }
            op::BINPUT => {
                let index = self.u8()?.into();
                self.put(index)?;
            }
            op::LONG_BINPUT => {
                let index = u32::from_le_bytes(self.array()?);
                self.put(index)?;
            }
            op::MEMOIZE => {
                let index = u32::try_from(self.memo.len()).map_err(|_| "the memo is full")?;
                self.put(index)?;
            }
            op::BINGET => {
                let index = self.u8()?.into();
                self.get(index)?;
            }
            op::LONG_BINGET => {
                let index = u32::from_le_bytes(self.array()?);
                self.get(index)?;
            }
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack.push(Value::Global(format!("{module}.{name}").into()));
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                self.stack.push(Value::Global(format!("{module}.{name}").into()));
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(&callable, &args, true)?;
                self.stack.push(v);
            }
            op::BUILD => {
                // Object attributes (an OrderedDict's `_metadata`, ...) are not needed.
                self.pop()?;
                self.top()?;
            }
            op::NEWOBJ => {
                self.pop()?;
                let class = self.pop()?;
                let v = self.new_object(&class);
                self.stack.push(v);
            }
            op::NEWOBJ_EX => {
                self.pop()?;
                self.pop()?;
                let class = self.pop()?;
                let v = self.new_object(&class);
                self.stack.push(v);
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                let v = self.persistent_load(&pid)?;
                self.stack.push(v);
            }
            _ => return Err("unsupported opcode (scalewise reads the pickles torch.save writes)".into()),
        }
        Ok(None)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let data = self.data;
        let end =
            self.pos.checked_add(n).filter(|&end| end <= data.len()).ok_or_else(|| {
                format!("needs {n} bytes of argument but the pickle has {} left", data.len() - self.pos)
            })?;
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// A length-prefixed argument of `n` bytes (checked against what is left before any allocation).
    fn counted(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| format!("length {n} does not fit in memory"))?;
        self.take(n)
    }

    fn string(&mut self, n: u64) -> Result<(), String> {
        let bytes = self.counted(n)?;
        self.stack.push(Value::Str(String::from_utf8_lossy(bytes).into()));
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<(), String> {
        self.counted(n)?;
        self.stack.push(Value::Bytes);
        Ok(())
    }

    /// A newline-terminated ASCII argument (GLOBAL).
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("an unterminated line argument")?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| "a line argument that is not UTF-8")?;
        self.pos += end + 1;
        Ok(line)
    }

    /// A little-endian two's-complement integer of `n` bytes (LONG1, LONG4).
    fn long(&mut self, n: usize) -> Result<Value, String> {
        let bytes = self.take(n)?;
        if n > 8 {
            return Err(format!("a {n}-byte integer, larger than scalewise reads"));
        }
        let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
        buf[..n].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buf)))
    }

    fn pop(&mut self) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("pops from an empty stack".into());
        }
        self.stack.pop().ok_or_else(|| "pops from an empty stack".into())
    }

    fn top(&self) -> Result<&Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("needs a value on an empty stack".into());
        }
        self.stack.last().ok_or_else(|| "needs a value on an empty stack".into())
    }

    /// Errors if taking the values from `start` on would cross the topmost mark.
    fn above_mark(&self, start: usize) -> Result<(), String> {
        if self.marks.last().is_some_and(|&m| start < m) {
            return Err("the stack holds too few values above the mark".into());
        }
        Ok(())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn put(&mut self, index: u32) -> Result<(), String> {
        let top = self.top()?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Result<(), String> {
        let v = self.memo.get(&index).cloned().ok_or_else(|| format!("memo entry {index} was never stored"))?;
        self.stack.push(v);
        Ok(())
    }

    fn new_seq(&mut self, items: Vec<Value>, tuple: bool) -> Value {
        self.seqs.push(items);
        let id = self.seqs.len() - 1;
        if tuple { Value::Tuple(id) } else { Value::List(id) }
    }

    fn new_dict(&mut self, pairs: Vec<(Value, Value)>) -> Value {
        self.maps.push(pairs);
        Value::Dict(self.maps.len() - 1)
    }

    /// APPEND, APPENDS, ADDITEMS onto the value on top of the stack.
    fn extend(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.top()? {
            Value::List(id) => {
                let id = *id;
                self.seqs[id].extend(items);
                Ok(())
            }
            // A custom list-like object: its contents are not needed.
            Value::Object(_) => Ok(()),
            other => Err(format!("appends to a {}", describe(other))),
        }
    }

    /// SETITEM, SETITEMS onto the value on top of the stack.
    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<(), String> {
        match self.top()? {
            Value::Dict(id) => {
                let id = *id;
                self.maps[id].extend(pairs);
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => Err(format!("sets items on a {}", describe(other))),
        }
    }

    fn seq(&self, value: &Value) -> Option<&[Value]> {
        match value {
            Value::Tuple(id) | Value::List(id) => Some(&self.seqs[*id]),
            _ => None,
        }
    }

    fn new_object(&mut self, class: &Value) -> Value {
        match class {
            Value::Global(name) if is_dict_class(name) => self.new_dict(Vec::new()),
            Value::Global(name) => Value::Object(name.clone()),
            _ => Value::Object("object".into()),
        }
    }

    /// REDUCE. `outer` is false for the function `_rebuild_from_type_v2` forwards to, which may not forward
    /// again.
    fn call(&mut self, callable: &Value, args: &Value, outer: bool) -> Result<Value, String> {
        let Value::Global(name) = callable else {
            return Ok(Value::Object("object".into()));
        };
        // The calls modelled here read at most their first four arguments: copying only a few keeps every
        // REDUCE O(1), however long a (memoised, reused) argument tuple is.
        let Some(args) = self.seq(args).map(|a| a[..a.len().min(8)].to_vec()) else {
            return Err(format!("calls {name} with {} instead of an argument tuple", describe(args)));
        };
        match &**name {
            n if is_dict_class(n) => {
                let mut pairs = Vec::new();
                // OrderedDict() or OrderedDict([(key, value), ...]).
                if let Some(items) = args.first() {
                    // Copying the items is linear in their number; a budget keeps a pickle that builds one
                    // long list and passes it to many calls linear too.
                    let count = self.seq(items).map_or(0, <[Value]>::len);
                    self.copy_budget = self.copy_budget.checked_sub(count).ok_or_else(|| {
                        format!("{name} called on more items than this pickle could hold (a hostile file?)")
                    })?;
                    for item in self.seq(items).unwrap_or(&[]) {
                        match self.seq(item) {
                            Some([k, v]) => pairs.push((k.clone(), v.clone())),
                            _ => return Err(format!("{name} called with an item that is not a pair")),
                        }
                    }
                }
                Ok(self.new_dict(pairs))
            }
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => self.rebuild_tensor(name, &args),
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                Some(other) => Err(format!("{name} called on a {}", describe(other))),
                None => Err(format!("{name} called without arguments")),
            },
            "torch._tensor._rebuild_from_type_v2" | "torch._tensor._rebuild_from_type" if outer => {
                // (func, new_type, args, state): a tensor subclass; its data is func(*args).
                match (args.first(), args.get(2)) {
                    (Some(func), Some(inner)) => {
                        let (func, inner) = (func.clone(), inner.clone());
                        self.call(&func, &inner, false)
                    }
                    _ => Err(format!("{name} called with {} arguments", args.len())),
                }
            }
            _ => Ok(Value::Object(name.clone())),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
    fn rebuild_tensor(&self, name: &str, args: &[Value]) -> Result<Value, String> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(format!("{name} called with {} arguments, expected at least 4", args.len()));
        };
        let Value::Storage(storage) = storage else {
            return Err(format!("{name} called on a {} instead of a storage", describe(storage)));
        };
        let offset = match offset {
            Value::Int(o) => u64::try_from(*o).map_err(|_| format!("negative storage offset {o}"))?,
            other => return Err(format!("{name}: the storage offset is a {}", describe(other))),
        };
        let ints = |v: &Value, what: &str| -> Result<Vec<u64>, String> {
            let items = self.seq(v).ok_or_else(|| format!("{name}: the {what} is a {}", describe(v)))?;
            if items.len() > 64 {
                return Err(format!("{name}: a {what} of {} dimensions", items.len()));
            }
            items
                .iter()
                .map(|item| match item {
                    Value::Int(i) => u64::try_from(*i).map_err(|_| format!("{name}: negative {what} entry {i}")),
                    other => Err(format!("{name}: a {what} entry is a {}", describe(other))),
                })
                .collect()
        };
        let shape = ints(size, "size")?;
        let stride = ints(stride, "stride")?;
        if shape.len() != stride.len() {
            return Err(format!("{name}: size {shape:?} and stride {stride:?} differ in rank"));
        }
        let shape = shape
            .into_iter()
            .map(|d| usize::try_from(d).map_err(|_| format!("{name}: dimension {d} does not fit in memory")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), offset, shape, stride })))
    }

    /// BINPERSID: `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&self, pid: &Value) -> Result<Value, String> {
        let fields = self.seq(pid).ok_or_else(|| format!("a persistent id that is a {}", describe(pid)))?;
        let [Value::Str(tag), class, key, ..] = fields else {
            return Err("a persistent id that is not ('storage', type, key, location, numel)".into());
        };
        if &**tag != "storage" {
            return Err(format!("a persistent id of kind {tag:?} (only 'storage' is known)"));
        }
        let class = match class {
            // torch.FloatStorage (legacy files: torch.cuda.FloatStorage) -> FloatStorage.
            Value::Global(name) if name.starts_with("torch.") => name.rsplit('.').next().unwrap_or(name).to_string(),
            Value::Global(name) => name.to_string(),
            other => return Err(format!("a storage whose type is a {}", describe(other))),
        };
        let key: Rc<str> = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string().into(),
            other => return Err(format!("a storage whose key is a {}", describe(other))),
        };
        Ok(Value::Storage(Rc::new(StorageRef { class, key })))
    }
}

fn is_dict_class(name: &str) -> bool {
    matches!(name, "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict")
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("{} values for key/value pairs", items.len()));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}
