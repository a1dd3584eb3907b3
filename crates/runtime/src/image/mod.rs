//! Turning a program file into a running image, shared by the runtime's
//! start and by `execve`: `#!` scripts run their interpreter, dynamically
//! linked programs run through their dynamic linker (see `interp`), the
//! memory manager builds the address space, and the runtime mirrors it and
//! writes the initial stack.

pub mod interp;
pub mod stack;

use crate::error::{Errno, SysError};
use crate::host::user;
use crate::mm::excache::LayoutChange;
use crate::process::Runtime;
use crate::vfs::Vfs;
use lego_proto::{ExecImage, MemoryOpDone, MAX_IMAGE_LEN, USER_END, USER_MIN};

/// A program ready to load.
pub struct Prepared {
    /// The image the memory manager loads (the program, its script
    /// interpreter, or its dynamic linker).
    pub image: Vec<u8>,
    /// The argv the image's entry point gets.
    pub argv: Vec<Vec<u8>>,
    /// The argv /proc/self/cmdline shows: the program's, as execve would
    /// have run it (the dynamic linker's command-mode arguments hidden).
    pub shown_argv: Vec<Vec<u8>>,
}

/// Why a program cannot run: what execve fails with (an errno, or a
/// runtime fault such as a lost storage manager), and a sentence for the
/// user.
#[derive(Debug)]
pub struct ExecError {
    pub error: SysError,
    pub message: String,
}

impl ExecError {
    fn new(errno: Errno, message: String) -> ExecError {
        ExecError {
            error: errno.into(),
            message,
        }
    }

    fn io(what: &str, path: &str, error: SysError) -> ExecError {
        let message = match &error {
            SysError::Errno(e) => {
                format!("{what} {path}: {}", std::io::Error::from_raw_os_error(e.0))
            }
            SysError::Fatal(why) => format!("{what} {path}: {why}"),
        };
        ExecError { error, message }
    }
}

/// How much of a file is read first: enough for a `#!` line and the
/// program headers with PT_INTERP of any ordinary ELF file. A dynamic
/// program or a script needs no more (the dynamic linker maps the rest).
const HEAD_LEN: usize = 64 << 10;

/// The first `max` bytes of a program file: from the storage manager when
/// the runtime has one, else from the processor's files.
fn load_prefix(vfs: Option<&Vfs>, path: &str, max: usize) -> Result<Vec<u8>, SysError> {
    match vfs {
        Some(vfs) => vfs.read_file(path.as_bytes(), max).map(|(bytes, _)| bytes),
        None => {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(max as u64).read_to_end(&mut bytes))
                .map_err(Errno::from)?;
            Ok(bytes)
        }
    }
}

/// A program file's head, or all of it (one byte more than an image may
/// have, to tell one too big) when it is neither a script nor dynamic.
fn load_file(vfs: Option<&Vfs>, path: &str) -> Result<Vec<u8>, SysError> {
    let head = load_prefix(vfs, path, HEAD_LEN)?;
    if head.len() < HEAD_LEN
        || interp::shebang(&head).is_some()
        || interp::interpreter(&head).is_some()
    {
        return Ok(head);
    }
    load_prefix(vfs, path, MAX_IMAGE_LEN + 1)
}

/// Reads `program` and follows `#!` lines and PT_INTERP to the image to load.
pub fn prepare(
    vfs: Option<&Vfs>,
    program: &[u8],
    argv: Vec<Vec<u8>>,
) -> Result<Prepared, ExecError> {
    let name = String::from_utf8_lossy(program).into_owned();
    let mut image = load_file(vfs, &name).map_err(|e| ExecError::io("cannot read", &name, e))?;
    let mut argv = argv;
    let mut exe = program.to_vec();
    for depth in 0.. {
        let Some((script_interp, arg)) = interp::shebang(&image) else {
            break;
        };
        if depth == interp::MAX_SCRIPT_DEPTH {
            return Err(ExecError::new(
                Errno::ELOOP,
                format!("cannot run {name}: too many levels of #! interpreters"),
            ));
        }
        let path = String::from_utf8_lossy(&script_interp).into_owned();
        argv = interp::script_argv(&script_interp, arg.as_deref(), &exe, &argv);
        image = load_file(vfs, &path)
            .map_err(|e| ExecError::io(&format!("cannot run {name}: its interpreter"), &path, e))?;
        exe = script_interp;
    }
    let shown_argv = argv.clone();
    if let Some(linker) = interp::interpreter(&image) {
        let path = String::from_utf8_lossy(&linker).into_owned();
        image = load_file(vfs, &path).map_err(|e| {
            ExecError::io(&format!("cannot load {name}: its interpreter"), &path, e)
        })?;
        argv = interp::linker_argv(&linker, &exe, &argv);
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(ExecError::new(
            Errno::ENOEXEC,
            format!(
                "{name} is {} bytes; images over {MAX_IMAGE_LEN} bytes are not supported yet",
                image.len()
            ),
        ));
    }
    Ok(Prepared {
        image,
        argv,
        shown_argv,
    })
}

/// Mirrors a freshly built address space (after dropping everything the
/// previous one left in the arena) and writes the initial stack. Returns
/// the stack pointer. `change` is the address-space lock, held since
/// before the memory manager built the image (released before the stack
/// is written: that write faults).
pub fn install(
    rt: &Runtime,
    change: LayoutChange<'_>,
    image: &ExecImage,
    prepared: &Prepared,
    envp: &[Vec<u8>],
    execfn: &[u8],
) -> Result<u64, String> {
    let argv = &prepared.argv;
    {
        rt.mm
            .cache
            .discard(&change, &rt.mm.arena, USER_MIN, USER_END)
            .map_err(|e| format!("clearing the arena: {e}"))?;
        rt.mm
            .arena
            .mirror(USER_MIN, USER_END, None)
            .map_err(|e| format!("clearing the arena: {e}"))?;
        rt.mm.apply(
            &change,
            &MemoryOpDone {
                result: 0,
                moves: Vec::new(),
                changes: image.mappings.clone(),
                spilled: Vec::new(),
                unspilled: Vec::new(),
            },
        )?;
        drop(change);
    }
    let mut random = [0u8; 16];
    // Safety: getrandom writes at most 16 bytes into `random`.
    unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    let (stack, sp, auxv) = stack::build(image, argv, envp, execfn, random)?;
    user::write(sp, &stack).map_err(|e| format!("cannot write the initial stack: {e}"))?;
    let mut process = rt.process.lock().unwrap_or_else(|p| p.into_inner());
    process.cmdline = prepared
        .shown_argv
        .iter()
        .flat_map(|a| a.iter().copied().chain([0]))
        .collect();
    process.environ = envp
        .iter()
        .flat_map(|e| e.iter().copied().chain([0]))
        .collect();
    process.auxv = auxv;
    process.stack_top = image.stack_top;
    // What ps and top show for this process.
    let name = execfn.rsplit(|&b| b == b'/').next().unwrap_or(execfn);
    let mut comm = [0u8; 16];
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name[..n]);
    // Safety: PR_SET_NAME reads a 16-byte NUL-terminated buffer of ours.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    Ok(sp)
}
