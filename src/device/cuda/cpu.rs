//! The CPU shim executor: each module's CUDA source (with `cpu_shim.h` in front) compiled by the host
//! C++ compiler into a shared library, loaded, and launched block by block with one fiber per thread.
//! It runs the very .cu files the GPU runs, so the op tests check their indexing, masking, tails,
//! barriers and tensor-core fragment layouts on a machine without CUDA. Slow: for tests, not work.

use std::ffi::{CString, c_char, c_void};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::compose::{self, ModuleKey, Target};
use crate::error::{Error, Result};

type LaunchFn = unsafe extern "C" fn(*const c_char, *const u32, *mut *mut c_void, *mut c_char, usize) -> i32;
type BlockFn = unsafe extern "C" fn(*const c_char, *mut u32) -> i32;

/// A loaded module.
pub(super) struct CpuModule {
    // Entry points into `_library`, which keeps them valid (plain function pointers, so the struct is
    // the same on every platform).
    launch: LaunchFn,
    block: BlockFn,
    _library: libloading::Library,
}

/// The host compiler: `$CXX`, else g++.
fn compiler() -> String {
    std::env::var("CXX").ok().filter(|c| !c.trim().is_empty()).unwrap_or_else(|| "g++".into())
}

/// `g++ --version`'s first line (part of the cache key), or why the compiler cannot run.
pub(super) fn compiler_version() -> std::result::Result<&'static str, String> {
    static VERSION: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            // The shim switches fibers with ucontext and maps their stacks with mmap.
            if cfg!(windows) {
                return Err("the CUDA CPU shim (cuda-cpu) needs a Unix host (Linux or macOS)".into());
            }
            let cxx = compiler();
            let out = Command::new(&cxx)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("the host C++ compiler {cxx:?} does not run ({e}); set CXX"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text.lines().next().unwrap_or("unknown").to_owned())
        })
        .as_ref()
        .map(String::as_str)
        .map_err(Clone::clone)
}

const FLAGS: &[&str] = &["-std=c++17", "-O1", "-shared", "-fPIC", "-w", "-x", "c++"];

/// Compiles (or finds in the disk cache) and loads the module of `key`.
pub(super) fn load(key: &ModuleKey) -> Result<CpuModule> {
    let label = key.label();
    let source = compose::compose(key, Target::Cpu)
        .ok_or_else(|| Error::CudaCompile { kernel: label.clone(), log: "no CUDA source for this family".into() })?;
    let version = compiler_version().map_err(Error::CudaUnavailable)?;
    let hash = compose::content_hash(&[source.as_bytes(), version.as_bytes(), FLAGS.join(" ").as_bytes()]);
    let dir = crate::device::disk_cache::dir("cuda-cpu").unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("{}-{hash}.so", key.family));
    let cached = crate::device::disk_cache::find(&path);
    if !cached {
        compile(&source, &path, &label)?;
    }
    // SAFETY: the library is our own module, built from our sources by the lines around; its static
    // constructors only register kernels.
    let open = || unsafe { libloading::Library::new(&path) };
    let unloadable = |e: libloading::Error| Error::CudaCompile {
        kernel: label.clone(),
        log: format!("loading {}: {e}", path.display()),
    };
    let library = match open() {
        Ok(library) => library,
        // A cached module that does not load (truncated by a crash or a full disk, or otherwise
        // damaged), or one another process pruned between the lookup and the load: build it again,
        // replacing it, rather than fail every later run on it.
        Err(_) if cached || !path.exists() => {
            compile(&source, &path, &label)?;
            open().map_err(unloadable)?
        }
        Err(e) => return Err(unloadable(e)),
    };
    // SAFETY: cpu_shim.h defines both symbols with exactly these signatures.
    let (launch, block) = unsafe {
        let launch = library.get::<LaunchFn>(b"sw_launch\0").map(|s| *s);
        let block = library.get::<BlockFn>(b"sw_kernel_block\0").map(|s| *s);
        (launch, block)
    };
    let missing = |e: libloading::Error| Error::CudaCompile { kernel: label.clone(), log: e.to_string() };
    Ok(CpuModule { launch: launch.map_err(missing)?, block: block.map_err(missing)?, _library: library })
}

fn compile(source: &str, path: &std::path::Path, label: &str) -> Result<()> {
    let tmp: PathBuf = crate::device::disk_cache::temporary(path, ".so");
    let mut child = Command::new(compiler())
        .args(FLAGS)
        .arg("-")
        .arg("-o")
        .arg(&tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::CudaUnavailable(format!("the host C++ compiler does not run ({e}); set CXX")))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(source.as_bytes())
            .map_err(|e| Error::CudaCompile { kernel: label.into(), log: format!("writing the source: {e}") })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::CudaCompile { kernel: label.into(), log: format!("waiting for the compiler: {e}") })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::CudaCompile {
            kernel: label.into(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::CudaCompile { kernel: label.into(), log: format!("storing the module: {e}") })
}

/// Serialises launches: a module's shared memory, fiber stacks and exchange slots are statics of
/// the loaded library, and one launch runs at a time.
static RUNNING: Mutex<()> = Mutex::new(());

impl CpuModule {
    /// The entry's declared block shape, or `None` when the module has no such entry.
    pub fn block(&self, entry: &str) -> Option<[u32; 3]> {
        let name = CString::new(entry).ok()?;
        let mut block = [0u32; 3];
        // SAFETY: `block` has room for the three values sw_kernel_block writes.
        (unsafe { (self.block)(name.as_ptr(), block.as_mut_ptr()) } == 0).then_some(block)
    }

    /// Runs `entry` over `grid`; `args` as cuLaunchKernel's kernelParams.
    pub fn launch(&self, entry: &str, grid: [u32; 3], args: &mut [*mut c_void], label: &str) -> Result<()> {
        let name = CString::new(entry).map_err(|_| Error::InvalidArgument { op: "launch", msg: entry.into() })?;
        let mut err = vec![0u8; 1024];
        let _running = RUNNING.lock().map_err(crate::device::poisoned)?;
        // SAFETY: `args` holds one pointer per kernel parameter, each to a value of that parameter's
        // type (device pointers into live host allocations, the params struct), as the kernel
        // contract fixes; `err` has the length passed.
        let rc = unsafe {
            (self.launch)(name.as_ptr(), grid.as_ptr(), args.as_mut_ptr(), err.as_mut_ptr().cast(), err.len())
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(Error::Gpu {
                what: format!("running {label}::{entry} on the CPU shim"),
                msg: String::from_utf8_lossy(&err[..end]).into_owned(),
            });
        }
        Ok(())
    }
}
