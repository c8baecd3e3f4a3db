//! Stop signals: names from images (`StopSignal` in the image config), the CRI `Signal`
//! enum (`ContainerConfig.stop_signal`, `ContainerStatus.stop_signal`) and signal numbers.
//!
//! Real-time signals count from glibc's `SIGRTMIN` (34) and `SIGRTMAX` (64), as Go's
//! runtimes (moby/sys `signal`) do.

use skiff_cri::api::Signal;

/// Classic signals by name (without `SIG`), aliases included.
const NAMED: &[(&str, i32)] = &[
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("IO", libc::SIGIO),
    ("IOT", libc::SIGIOT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("POLL", libc::SIGPOLL),
    ("PROF", libc::SIGPROF),
    ("PWR", libc::SIGPWR),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("STKFLT", libc::SIGSTKFLT),
    ("STOP", libc::SIGSTOP),
    ("SYS", libc::SIGSYS),
    ("TERM", libc::SIGTERM),
    ("TRAP", libc::SIGTRAP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("VTALRM", libc::SIGVTALRM),
    ("WINCH", libc::SIGWINCH),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
];

fn rtmin() -> i32 {
    libc::SIGRTMIN()
}

fn rtmax() -> i32 {
    libc::SIGRTMAX()
}

/// The number of a signal named as images and Docker name them: `SIGTERM`, `term`, `15`,
/// `SIGRTMIN+3`, `RTMAX-2`. `None` for anything else (or a number outside 1..=64).
pub(crate) fn from_name(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    if let Ok(num) = n.parse::<i32>() {
        return (1..=rtmax()).contains(&num).then_some(num);
    }
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    if let Some(&(_, num)) = NAMED.iter().find(|(k, _)| *k == n) {
        return Some(num);
    }
    let rt = |s: &str| -> Option<i32> {
        if s.is_empty() {
            Some(0)
        } else {
            s.parse().ok()
        }
    };
    let num = if let Some(rest) = n.strip_prefix("RTMIN") {
        let off = rest.strip_prefix('+').map_or_else(|| rt(rest), rt)?;
        rtmin() + off
    } else if let Some(rest) = n.strip_prefix("RTMAX") {
        let off = rest.strip_prefix('-').map_or_else(|| rt(rest), rt)?;
        rtmax() - off
    } else {
        return None;
    };
    (rtmin()..=rtmax()).contains(&num).then_some(num)
}

/// The number of a CRI `Signal`; `None` for `RUNTIME_DEFAULT` (the runtime picks).
pub(crate) fn from_cri(signal: Signal) -> Option<i32> {
    if signal == Signal::RuntimeDefault {
        return None;
    }
    // The proto names are `SIGTERM`, `SIGRTMINPLUS3`, `SIGRTMAXMINUS2`, `SIGRTMAX`.
    let name = signal
        .as_str_name()
        .replace("PLUS", "+")
        .replace("MINUS", "-");
    from_name(&name)
}

/// The CRI `Signal` of a signal number (the canonical name where several share it).
pub(crate) fn to_cri(num: i32) -> Signal {
    let canonical = |n: i32| {
        // Prefer the names Go's runtimes report: CHLD over CLD, ABRT over IOT, IO over POLL.
        NAMED
            .iter()
            .filter(|(k, _)| !matches!(*k, "CLD" | "IOT" | "POLL"))
            .find(|(_, v)| *v == n)
            .map(|(k, _)| format!("SIG{k}"))
    };
    let name = match canonical(num) {
        Some(name) => name,
        None if num == rtmin() => "SIGRTMIN".to_string(),
        None if num == rtmax() => "SIGRTMAX".to_string(),
        None if num > rtmin() && num <= rtmin() + 15 => format!("SIGRTMINPLUS{}", num - rtmin()),
        None if num < rtmax() && num >= rtmin() => format!("SIGRTMAXMINUS{}", rtmax() - num),
        None => return Signal::RuntimeDefault,
    };
    Signal::from_str_name(&name).unwrap_or(Signal::RuntimeDefault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(from_name("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(from_name("quit"), Some(libc::SIGQUIT));
        assert_eq!(from_name("9"), Some(9));
        assert_eq!(from_name("SIGRTMIN+3"), Some(libc::SIGRTMIN() + 3));
        assert_eq!(from_name("SIGRTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(from_name("SIGRTMAX"), Some(libc::SIGRTMAX()));
        assert_eq!(from_name("SIGNOPE"), None);
        assert_eq!(from_name("0"), None);
        assert_eq!(from_name("SIGRTMIN+40"), None);
    }

    #[test]
    fn every_cri_signal_round_trips() {
        for v in 1..=65 {
            let sig = Signal::try_from(v).unwrap();
            let num = from_cri(sig).unwrap_or_else(|| panic!("{sig:?} has no number"));
            let back = to_cri(num);
            // Aliases come back as their canonical name, with the same number.
            assert_eq!(from_cri(back), Some(num), "{sig:?}");
        }
        assert_eq!(from_cri(Signal::RuntimeDefault), None);
        assert_eq!(to_cri(libc::SIGTERM), Signal::Sigterm);
        assert_eq!(to_cri(libc::SIGCHLD), Signal::Sigchld);
        assert_eq!(to_cri(libc::SIGRTMIN() + 1), Signal::Sigrtminplus1);
    }
}
