//! The terminal side of `trellis top`: raw mode and the alternate screen for the life of the
//! view (restored on quit, error or panic), a redraw every second, keys polled every 100 ms,
//! and a task that keeps a tap stream open (reopened when its bound ends it or it breaks).

use std::io::{Write, stdout};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers};
use crossterm::{cursor, execute, queue, terminal};
use tokio::sync::mpsc;

use super::{Table, TopArgs};
use crate::tap::TapRow;
use crate::tap::stream::{self, OpenError, TapStream};

const REDRAW: Duration = Duration::from_secs(1);
const KEY_POLL: Duration = Duration::from_millis(100);
/// Before reopening a stream that ended or broke.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// What the stream task tells the view.
#[derive(Debug)]
enum Update {
    Row(Box<TapRow>),
    /// Shown on the status line (e.g. the stream broke and is being reopened).
    Note(String),
}

/// The control plane's query: the longest bounds, since the view runs until `q`.
fn query(args: &TopArgs) -> String {
    let mut q = format!(
        "workload={}&namespace={}&max_rows=10000&max_seconds=600",
        stream::encode(&args.target),
        stream::encode(&args.namespace)
    );
    if let Some(p) = &args.path {
        q.push_str(&format!("&path={}", stream::encode(p)));
    }
    if let Some(t) = &args.to {
        q.push_str(&format!("&to={}", stream::encode(t)));
    }
    q
}

/// Runs the view until `q`; returns the exit code (1 when the first stream cannot be opened,
/// 64 on bad usage).
pub fn run(args: &TopArgs, err: &mut dyn Write) -> u8 {
    let (control, runtime) =
        match crate::runtime::control_and_start(&args.control, "trellis top", err) {
            Ok(started) => started,
            Err(code) => return code,
        };
    runtime.block_on(async {
        let query = query(args);
        // Opened before the terminal is taken, so a mistake prints as a plain message.
        let first = match stream::open(control, &query).await {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(err, "trellis top: {e}");
                return match e {
                    OpenError::Refused { status, .. } if status.as_u16() == 400 => {
                        crate::EXIT_USAGE
                    }
                    _ => crate::EXIT_FAILURE,
                };
            }
        };
        let tapping = first.proxies.join(", ");
        let (tx, rx) = mpsc::channel(4096);
        let feeder = tokio::spawn(feed(first, control, query, tx));
        let code = match Screen::enter() {
            Ok(screen) => {
                let outcome = view(args, &tapping, rx).await;
                drop(screen);
                match outcome {
                    Ok(()) => 0,
                    Err(e) => {
                        let _ = writeln!(err, "trellis top: terminal: {e}");
                        crate::EXIT_FAILURE
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(err, "trellis top: cannot take the terminal: {e}");
                crate::EXIT_FAILURE
            }
        };
        feeder.abort();
        code
    })
}

/// Keeps a stream open and forwards its rows until the view goes away.
async fn feed(
    mut current: TapStream,
    control: SocketAddr,
    query: String,
    tx: mpsc::Sender<Update>,
) {
    loop {
        let note = loop {
            match current.next_line().await {
                Ok(Some(line)) => {
                    let update = match serde_json::from_str::<TapRow>(&line) {
                        Ok(row) => Update::Row(Box::new(row)),
                        Err(e) => Update::Note(format!("skipped a row that is not JSON: {e}")),
                    };
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if let Some(note) = note
            && tx.send(Update::Note(note)).await.is_err()
        {
            return;
        }
        // Reopen until it works again or the view is gone (each try is bounded by the
        // client's open timeout; the view's `q` aborts this task).
        current = loop {
            tokio::time::sleep(REOPEN_AFTER).await;
            match stream::open(control, &query).await {
                Ok(s) => break s,
                Err(e) => {
                    if tx.send(Update::Note(e.to_string())).await.is_err() {
                        return;
                    }
                }
            }
        };
    }
}

async fn view(
    args: &TopArgs,
    tapping: &str,
    mut rx: mpsc::Receiver<Update>,
) -> std::io::Result<()> {
    let mut table = Table::default();
    let mut note = String::new();
    let started = Instant::now();
    let mut last_draw: Option<Instant> = None;
    loop {
        while let Ok(update) = rx.try_recv() {
            match update {
                Update::Row(row) => {
                    table.record(&row);
                    note.clear();
                }
                Update::Note(n) => note = n,
            }
        }
        while event::poll(Duration::ZERO)? {
            if let Event::Key(key) = event::read()?
                && is_quit(key)
            {
                return Ok(());
            }
        }
        if last_draw.is_none_or(|t| t.elapsed() >= REDRAW) {
            let (cols, rows) = terminal::size()?;
            let title = format!(
                "trellis top {} ({}): {} requests in {}s, tapping {tapping}",
                args.target,
                args.namespace,
                table.total,
                started.elapsed().as_secs()
            );
            let status = if note.is_empty() {
                "q: quit   (refreshed every second)".to_owned()
            } else {
                format!("q: quit   {note}")
            };
            draw(&table.render(&title, &status, usize::from(cols), usize::from(rows)))?;
            last_draw = Some(Instant::now());
        }
        tokio::time::sleep(KEY_POLL).await;
    }
}

fn is_quit(key: KeyEvent) -> bool {
    matches!(
        key.code,
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc
    ) || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
}

fn draw(lines: &[String]) -> std::io::Result<()> {
    let mut out = stdout().lock();
    for (i, line) in lines.iter().enumerate() {
        let y = u16::try_from(i).unwrap_or(u16::MAX);
        queue!(
            out,
            cursor::MoveTo(0, y),
            terminal::Clear(terminal::ClearType::CurrentLine)
        )?;
        out.write_all(line.as_bytes())?;
    }
    out.flush()
}

/// The terminal in raw mode on the alternate screen; dropping it (or a panic) restores it.
#[derive(Debug)]
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Self> {
        terminal::enable_raw_mode()?;
        let screen = Screen;
        execute!(
            stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide,
            terminal::Clear(terminal::ClearType::All)
        )?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(screen)
    }
}

fn restore() {
    let _ = execute!(stdout(), cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}
