//! The bpf(2) map element commands: aya 0.14 reads and writes maps only
//! through key and value types known at compile time.
use std::io;

// The bpf(2) map element commands and their attribute block.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_ANY: u64 = 0;

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// The value, or the next key for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, fd: i32, key: *const u8, value: *mut u8, flags: u64) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags,
    };
    // SAFETY: the attribute block and the buffers it points to outlive the
    // call, and the callers size the buffers for the map's key and value.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The key after `key` (the first key for None) into `next`; false at the end.
pub(super) fn next_key(fd: i32, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let key = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
    match bpf(BPF_MAP_GET_NEXT_KEY, fd, key, next.as_mut_ptr(), 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(super) fn lookup(fd: i32, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    bpf(BPF_MAP_LOOKUP_ELEM, fd, key.as_ptr(), value.as_mut_ptr(), 0)
}

pub(super) fn update(fd: i32, key: &[u8], value: &[u8]) -> io::Result<()> {
    bpf(
        BPF_MAP_UPDATE_ELEM,
        fd,
        key.as_ptr(),
        value.as_ptr().cast_mut(),
        BPF_ANY,
    )
}
