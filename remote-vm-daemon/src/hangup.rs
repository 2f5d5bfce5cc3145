//! SIGHUP is `run`'s reload signal, and its default action ends a process. It
//! is blocked before `main` runs (`block`, called by the binary's
//! `.init_array` constructor), so one that arrives while the daemon starts
//! stays pending; `run` unblocks it once its handler exists (before
//! `READY=1`), when the pending one is delivered and reloads. The other
//! subcommands unblock it at once: a terminal hang-up still ends `top`.

fn set(how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a signal set we own, filled by sigemptyset/sigaddset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        match libc::pthread_sigmask(how, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

/// Blocks SIGHUP on the calling thread (and the threads it starts afterwards).
pub fn block() {
    let _ = set(libc::SIG_BLOCK);
}

/// Unblocks SIGHUP on the calling thread: a pending one is delivered now.
pub fn unblock() -> std::io::Result<()> {
    set(libc::SIG_UNBLOCK)
}

/// Whether SIGHUP is blocked on the calling thread.
pub fn blocked() -> bool {
    // SAFETY: sigprocmask with no new set only reads the mask into `old`.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old) == 0 && libc::sigismember(&old, libc::SIGHUP) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_unblock_change_this_threads_mask() {
        // On a thread of its own: the test harness' threads keep their mask.
        std::thread::spawn(|| {
            block();
            assert!(blocked());
            unblock().unwrap();
            assert!(!blocked());
        })
        .join()
        .unwrap();
    }
}
