//! Giving back the pages of the binary that only starting up needed.
//!
//! Why: measured at workload A (README, "the cost of a poll"), 12 of the daemon's ~30 MB
//! resident were its own code and read-only data, touched once at start — the config reader,
//! the rule compiler (regexes, the keyword automaton, rhai), SQLite's parser and schema code,
//! clap — and mapped for good, while a poll runs a few hundred KB of it. Some seconds after
//! start, [`drop_startup_pages`] unmaps the binary's clean read-only segments
//! (`madvise(MADV_DONTNEED)`); a page the daemon uses again is mapped back from the page cache
//! on first touch (a minor fault: the file's pages stay cached, nothing is read from disk), so
//! what stays resident is the code the running daemon uses. Only clean, read-only file pages
//! are touched: nothing the process wrote can be lost, and a failure changes nothing but the
//! figure.
//!
//! Owns: finding the binary's read-only mappings and dropping them. Must not: touch writable
//! or anonymous memory.

/// The clean read-only mappings (`r-xp`, `r--p`) of the file at `exe` in a `/proc/self/smaps`
/// text, as (start, length). A mapping with anonymous pages is left out: the relocated part of
/// the binary (RELRO: the GOT, vtables) is read-only too once relocated, but its pages were
/// written at load time, and dropping them would bring back the file's unrelocated bytes.
fn clean_read_only_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut clean = false;
    let mut finish = |current: Option<(usize, usize)>, clean: bool| {
        if let Some(m) = current.filter(|_| clean) {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let Some(first) = parts.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            // A mapping's header line: `start-end perms offset dev inode path`.
            finish(current.take(), clean);
            let perms = parts.next().unwrap_or("");
            let path = parts.nth(3).unwrap_or("");
            if path == exe && (perms == "r-xp" || perms == "r--p") && end > start {
                current = Some((start, end - start));
                clean = true;
            }
        } else if first == "Anonymous:" && parts.next() != Some("0") {
            clean = false;
        }
    }
    finish(current, clean);
    out
}

/// Drops the binary's clean read-only pages from this process's resident set; returns how many
/// bytes of mappings were dropped (0 where the platform has no `/proc/self/smaps`).
pub(crate) fn drop_startup_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let Some(exe) = std::fs::read_link("/proc/self/exe")
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
        else {
            return 0;
        };
        let mut dropped = 0;
        for (start, len) in clean_read_only_mappings(&smaps, &exe) {
            // SAFETY: the range is a whole read-only, private mapping of the binary file with no
            // anonymous (written) page, taken from /proc/self/smaps; MADV_DONTNEED on it only
            // unmaps clean file pages, which the next access maps again from the file with the
            // same contents.
            let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
            if rc == 0 {
                dropped += len;
            }
        }
        dropped
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binary_s_clean_read_only_mappings_are_chosen() {
        let smaps = "\
55d0a0000000-55d0a0200000 r--p 00000000 08:01 123 /usr/bin/cartat-rules
Rss:                 800 kB
Anonymous:             0 kB
55d0a0200000-55d0a0e00000 r-xp 00200000 08:01 123 /usr/bin/cartat-rules
Rss:                9000 kB
Anonymous:             0 kB
55d0a0e00000-55d0a0f00000 r--p 00e00000 08:01 123 /usr/bin/cartat-rules
Rss:                 300 kB
Anonymous:           300 kB
55d0a0f00000-55d0a1000000 r--p 00f00000 08:01 123 /usr/bin/cartat-rules
Anonymous:             0 kB
55d0a1000000-55d0a1010000 rw-p 01000000 08:01 123 /usr/bin/cartat-rules
Anonymous:            64 kB
55d0a2000000-55d0a3000000 rw-p 00000000 00:00 0 [heap]
Anonymous:          4096 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 456 /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Anonymous:            12 kB
";
        assert_eq!(
            clean_read_only_mappings(smaps, "/usr/bin/cartat-rules"),
            [
                (0x55d0a0000000, 0x200000),
                (0x55d0a0200000, 0xc00000),
                (0x55d0a0f00000, 0x100000)
            ],
            "the relocated read-only mapping (anonymous pages) is kept"
        );
        assert!(clean_read_only_mappings(smaps, "/usr/bin/other").is_empty());
    }

    /// The process goes on running the code it dropped (it is mapped back on first touch), and
    /// its resident set shrinks.
    #[test]
    fn dropping_the_pages_keeps_the_code_running() {
        let dropped = drop_startup_pages();
        if cfg!(target_os = "linux") {
            assert!(dropped > 0, "nothing was dropped");
        }
        // Code and read-only data used again after the drop.
        let text = format!("{:?}", crate::duration::parse("15m"));
        assert!(text.contains("900"), "{text}");
    }
}
