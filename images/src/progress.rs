//! Progress while images are made: what the build stream (or debootstrap, or cargo) says,
//! reduced to the current step, bytes downloaded or sent and elapsed time, shown on stderr —
//! one line rewritten in place on a terminal, plain lines otherwise (CI logs). The parsing is
//! pure and table-tested; the display keeps the last lines of output so a failed build can say
//! what went wrong.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// What one line of a build's or debootstrap's output means for progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// `Step 3/9 : RUN apt-get update` (Docker's classic builder).
    Step { index: u32, total: u32, instruction: &'a str },
    /// apt downloading one file: `Get:12 http://... libc6 amd64 2.36-9 [2,757 kB]`.
    AptGet { bytes: u64 },
    /// debootstrap starting a phase: `I: Resolving dependencies of base packages...`.
    Phase(&'a str),
    /// debootstrap working on one package: `I: Unpacking libc6...` → ("Unpacking", "libc6");
    /// or cargo compiling one: `   Compiling libc v0.2.191` → ("Compiling", "libc").
    Package { action: &'static str, package: &'a str },
    /// Anything else.
    Other,
}

/// Classifies one output line (without its newline).
pub fn parse_line(line: &str) -> Line<'_> {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("Step ")
        && let Some((counts, instruction)) = rest.split_once(" : ")
        && let Some((index, total)) = counts.split_once('/')
        && let (Ok(index), Ok(total)) = (index.parse(), total.parse())
    {
        return Line::Step { index, total, instruction: instruction.trim() };
    }
    if line.starts_with("Get:")
        && line.ends_with(']')
        && let Some(open) = line.rfind('[')
        && let Some(bytes) = parse_apt_size(&line[open + 1..line.len() - 1])
    {
        return Line::AptGet { bytes };
    }
    // Cargo right-aligns its verbs in 12 columns: `   Compiling <name> v<version>[ (<path>)]`.
    if let Some(rest) = line.strip_prefix("   Compiling ")
        && let Some((package, version)) = rest.split_once(' ')
        && version.starts_with('v')
    {
        return Line::Package { action: "Compiling", package };
    }
    if let Some(rest) = line.strip_prefix("I: ") {
        for action in ["Retrieving", "Validating", "Extracting", "Unpacking", "Configuring"] {
            if let Some(what) = rest.strip_prefix(action).and_then(|r| r.strip_prefix(' '))
                && let Some(package) = what.split([' ', '.']).next()
                && package.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return Line::Package { action, package };
            }
        }
        return Line::Phase(rest.trim());
    }
    Line::Other
}

/// apt's human sizes (`512 B`, `2,757 kB`, `45.6 MB`; decimal units) in bytes.
pub fn parse_apt_size(text: &str) -> Option<u64> {
    let (number, unit) = text.trim().split_once(' ')?;
    let factor = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    let number: f64 = number.replace(',', "").parse().ok()?;
    Some((number * factor).round() as u64)
}

/// `line` without ANSI colour sequences (`ESC [ ... m`, which the builder puts around a
/// command's stderr).
pub fn strip_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes as `12.3 MB` (decimal, like apt and Docker).
pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.2} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// Where progress goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// One line rewritten on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// One line rewritten in place (for a terminal).
    Tty,
    /// A line per step or phase (for logs).
    Plain,
    /// Nothing.
    Quiet,
}

impl Mode {
    fn resolve(self) -> Mode {
        match self {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            other => other,
        }
    }
}

/// How many output lines a failure report shows.
const KEPT_LINES: usize = 40;

/// Progress of making one image.
pub struct Progress {
    image: String,
    mode: Mode,
    started: Instant,
    step: Option<String>,
    activity: Option<String>,
    downloaded: u64,
    sent: u64,
    recent: VecDeque<String>,
    /// Plain mode: the debootstrap actions already shown, so each shows once.
    actions_shown: Vec<&'static str>,
    drawn: bool,
}

impl Progress {
    pub fn new(image: &str, mode: Mode) -> Self {
        Progress {
            image: image.to_string(),
            mode: mode.resolve(),
            started: Instant::now(),
            step: None,
            activity: None,
            downloaded: 0,
            sent: 0,
            recent: VecDeque::with_capacity(KEPT_LINES),
            actions_shown: Vec::new(),
            drawn: false,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Text from the build or debootstrap, possibly several lines or a partial one.
    pub fn output(&mut self, text: &str) {
        for line in text.lines().map(strip_colours) {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if self.recent.len() == KEPT_LINES {
                self.recent.pop_front();
            }
            self.recent.push_back(line.to_string());
            match parse_line(line) {
                Line::Step { index, total, instruction } => {
                    self.step = Some(format!("Step {index}/{total} : {instruction}"));
                    self.activity = None;
                    self.plain(&self.status_line(self.elapsed()));
                }
                Line::AptGet { bytes } => self.downloaded += bytes,
                Line::Phase(phase) => {
                    self.step = Some(phase.to_string());
                    self.activity = None;
                    self.plain(&self.status_line(self.elapsed()));
                }
                Line::Package { action, package } => {
                    self.activity = Some(format!("{action} {package}"));
                    if !self.actions_shown.contains(&action) {
                        self.actions_shown.push(action);
                        self.plain(&format!("[{} {}s] {action} packages", self.image, self.elapsed().as_secs()));
                    }
                }
                Line::Other => {}
            }
        }
        self.redraw();
    }

    /// A step of our own (not from the stream), e.g. `importing into Docker`.
    pub fn phase(&mut self, phase: &str) {
        self.step = Some(phase.to_string());
        self.activity = None;
        self.plain(&self.status_line(self.elapsed()));
        self.redraw();
    }

    /// Bytes sent to the daemon (build context, rootfs archive).
    pub fn sent(&mut self, total: u64) {
        self.sent = total;
        self.redraw();
    }

    /// Rewrites the terminal line (elapsed time moves even when the stream is quiet).
    pub fn redraw(&mut self) {
        if self.mode == Mode::Tty {
            let line = self.status_line(self.elapsed());
            let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(120usize);
            let shown: String = line.chars().take(width.saturating_sub(1)).collect();
            eprint!("\r\x1b[2K{shown}");
            self.drawn = true;
        }
    }

    /// Ends the display of this image with a final line.
    pub fn finish(&mut self, result: &str) {
        let line = format!("[{} {:.0}s] {result}", self.image, self.elapsed().as_secs_f64());
        match self.mode {
            Mode::Tty => eprintln!("\r\x1b[2K{line}"),
            Mode::Plain => eprintln!("{line}"),
            _ => {}
        }
        self.drawn = false;
    }

    /// The last lines of output, for an error report.
    pub fn recent_output(&self) -> String {
        self.recent.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// The step shown now, for an error report.
    pub fn current_step(&self) -> Option<&str> {
        self.step.as_deref()
    }

    /// `[python 42s, downloaded 12.3 MB, sent 4.1 kB] Step 3/4 : RUN apt-get ...`: the numbers
    /// first, so a narrow terminal cuts the step's text rather than them.
    pub fn status_line(&self, elapsed: Duration) -> String {
        let mut line = format!("[{} {}s", self.image, elapsed.as_secs());
        if self.downloaded > 0 {
            line.push_str(&format!(", downloaded {}", human_bytes(self.downloaded)));
        }
        if self.sent > 0 {
            line.push_str(&format!(", sent {}", human_bytes(self.sent)));
        }
        line.push(']');
        if let Some(step) = &self.step {
            line.push(' ');
            line.push_str(step);
        }
        if let Some(activity) = &self.activity {
            line.push_str(" · ");
            line.push_str(activity);
        }
        line
    }

    fn plain(&self, line: &str) {
        if self.mode == Mode::Plain {
            eprintln!("{line}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Leave the terminal on a fresh line if the build ended without `finish`.
        if self.drawn {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::step("Step 3/9 : RUN apt-get update", Line::Step { index: 3, total: 9, instruction: "RUN apt-get update" })]
    #[case::step_with_newline("Step 10/12 : COPY x /y\n", Line::Step { index: 10, total: 12, instruction: "COPY x /y" })]
    #[case::step_instruction_with_colons("Step 1/2 : ENV A=b:c", Line::Step { index: 1, total: 2, instruction: "ENV A=b:c" })]
    #[case::not_a_step("Step up: no", Line::Other)]
    #[case::apt_get_kb("Get:12 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9+deb12u10 [2,757 kB]", Line::AptGet { bytes: 2_757_000 })]
    #[case::apt_get_mb("Get:1 http://deb.debian.org/debian bookworm/main amd64 openjdk-17-jdk-headless amd64 17.0.15 [71.9 MB]", Line::AptGet { bytes: 71_900_000 })]
    #[case::apt_get_bytes("Get:3 http://deb.debian.org/debian bookworm/main amd64 tiny all 1 [512 B]", Line::AptGet { bytes: 512 })]
    #[case::apt_hit("Hit:1 http://deb.debian.org/debian bookworm InRelease", Line::Other)]
    #[case::apt_fetched_summary("Fetched 45.6 MB in 3s (12.3 MB/s)", Line::Other)]
    #[case::debootstrap_phase(
        "I: Resolving dependencies of base packages...",
        Line::Phase("Resolving dependencies of base packages...")
    )]
    #[case::debootstrap_release("I: Retrieving InRelease ", Line::Phase("Retrieving InRelease"))]
    #[case::debootstrap_retrieving("I: Retrieving libc6 2.36-9+deb12u10", Line::Package { action: "Retrieving", package: "libc6" })]
    #[case::debootstrap_unpacking("I: Unpacking libgcc-s1:amd64...", Line::Package { action: "Unpacking", package: "libgcc-s1:amd64" })]
    #[case::debootstrap_configuring("I: Configuring base-files...", Line::Package { action: "Configuring", package: "base-files" })]
    #[case::builder_noise(" ---> Running in 0123456789ab", Line::Other)]
    #[case::cargo_compiling("   Compiling libc v0.2.191", Line::Package { action: "Compiling", package: "libc" })]
    #[case::cargo_compiling_workspace_crate(
        "   Compiling deskpod-portal v0.1.0 (/work/main/portal)",
        Line::Package { action: "Compiling", package: "deskpod-portal" }
    )]
    #[case::cargo_finished("    Finished `release` profile [optimized] target(s) in 5m 12s", Line::Other)]
    #[case::compiling_prose("Compiling the world takes a while", Line::Other)]
    fn lines(#[case] line: &str, #[case] expected: Line) {
        assert_eq!(parse_line(line), expected);
    }

    #[rstest]
    #[case::plain("E: Unable to locate package x", "E: Unable to locate package x")]
    #[case::builder_stderr_colour("\x1b[91mE: Unable to locate package x\n\x1b[0m", "E: Unable to locate package x\n")]
    #[case::lone_escape("a\x1bb", "a\x1bb")]
    fn colours(#[case] line: &str, #[case] expected: &str) {
        assert_eq!(strip_colours(line), expected);
    }

    #[rstest]
    #[case("512 B", Some(512))]
    #[case("2,757 kB", Some(2_757_000))]
    #[case("45.6 MB", Some(45_600_000))]
    #[case("1.2 GB", Some(1_200_000_000))]
    #[case("12 KiB", None)]
    #[case("lots", None)]
    fn apt_sizes(#[case] text: &str, #[case] expected: Option<u64>) {
        assert_eq!(parse_apt_size(text), expected);
    }

    #[test]
    fn the_status_line_carries_step_bytes_and_elapsed() {
        let mut p = Progress::new("python", Mode::Quiet);
        p.output("Step 2/4 : RUN apt-get update\nGet:1 http://x bookworm/main amd64 a amd64 1 [1,500 kB]\n");
        p.output("Get:2 http://x bookworm/main amd64 b amd64 1 [2.5 MB]\n");
        p.sent(4_100);
        assert_eq!(
            p.status_line(Duration::from_secs(42)),
            "[python 42s, downloaded 4.0 MB, sent 4.1 kB] Step 2/4 : RUN apt-get update"
        );
        p.output("I: Unpacking libc6:amd64...");
        assert!(p.status_line(Duration::ZERO).contains("· Unpacking libc6:amd64"));
    }

    #[test]
    fn only_the_last_lines_are_kept_for_a_failure_report() {
        let mut p = Progress::new("base", Mode::Quiet);
        for i in 0..100 {
            p.output(&format!("line {i}\n"));
        }
        let kept = p.recent_output();
        assert!(kept.starts_with("line 60\n") && kept.ends_with("line 99"), "{kept}");
    }
}
