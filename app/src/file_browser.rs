//! A small file picker drawn with egui itself: it works the same on every platform and backend,
//! needs no system dialog service (portals, GTK) and runs inside the headless UI tests.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use eframe::egui;
use egui::RichText;

/// Extensions the model loader reads: torch.save zips and safetensors.
pub const CHECKPOINT_EXTENSIONS: &[&str] = &["pth", "pt", "safetensors"];

/// Which model field a pick fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickTarget {
    Var,
    Vae,
}

/// What the browser did this frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserAction {
    None,
    Picked(PickTarget, PathBuf),
    Closed,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    path: PathBuf,
    is_dir: bool,
    bytes: u64,
}

pub struct FileBrowser {
    pub target: PickTarget,
    dir: PathBuf,
    /// The editable location bar.
    location: String,
    entries: Vec<Entry>,
    /// Why the folder could not be listed (shown in place of the entries).
    error: Option<String>,
    /// Show every file, hidden ones included, not only checkpoints.
    show_all: bool,
    /// A listing still running on its own thread (a large or slow folder, a network mount): its
    /// result arrives here, and the entries stay empty until it does.
    pending: Option<Receiver<std::io::Result<Vec<Entry>>>>,
}

/// How long `go` waits for a folder's listing on the UI thread before showing it as still listing:
/// 100 000 entries took 171 ms to list here, so a local folder of up to some 15 000 shows on the
/// frame it opens, and a larger or slower one no longer freezes the window.
const LISTING_WAIT: Duration = Duration::from_millis(30);

impl FileBrowser {
    /// Opens at the folder of `current` (the field's path) when it exists, else the working folder.
    pub fn open(target: PickTarget, current: &str) -> Self {
        let current = Path::new(current.trim());
        let start = [Some(current), current.parent()]
            .into_iter()
            .flatten()
            .find(|p| !p.as_os_str().is_empty() && p.is_dir())
            .map(Path::to_path_buf)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        let mut browser = Self {
            target,
            dir: PathBuf::new(),
            location: String::new(),
            entries: Vec::new(),
            error: None,
            show_all: false,
            pending: None,
        };
        browser.go(start);
        browser
    }

    /// The folder shown.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names listed (folders end in '/'), in display order.
    pub fn listed(&self) -> Vec<String> {
        self.entries.iter().map(|e| if e.is_dir { format!("{}/", e.name) } else { e.name.clone() }).collect()
    }

    /// Shows `dir`, listed on a thread of its own: waits up to `LISTING_WAIT` for it, then shows
    /// the folder as still listing (`poll` takes the result when it comes). A folder that cannot be
    /// read keeps the browser open with the reason shown.
    pub fn go(&mut self, dir: PathBuf) {
        self.go_waiting(dir, LISTING_WAIT);
    }

    fn go_waiting(&mut self, dir: PathBuf, wait: Duration) {
        let dir = resolve(dir);
        self.location = dir.display().to_string();
        self.entries.clear();
        self.error = None;
        let (send, receive) = std::sync::mpsc::channel();
        let (folder, show_all) = (dir.clone(), self.show_all);
        // A listing the user has left (another folder asked for first) finishes unread: its
        // receiver is gone, so its send fails and the thread ends.
        let spawned = std::thread::Builder::new()
            .name("file-browser listing".into())
            .spawn(move || drop(send.send(list(&folder, show_all))));
        self.dir = dir;
        match spawned {
            Ok(_) => {
                self.pending = Some(receive);
                if let Ok(listing) = self.pending.as_ref().expect("just set").recv_timeout(wait) {
                    self.take(listing);
                }
            }
            // No thread to be had: list here, as before.
            Err(_) => {
                self.pending = None;
                self.take(list(&self.dir, self.show_all));
            }
        }
    }

    /// Takes the listing of the folder shown, if it has come; true once none is pending.
    pub fn poll(&mut self) -> bool {
        let Some(pending) = &self.pending else { return true };
        match pending.try_recv() {
            Ok(listing) => self.take(listing),
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => {
                self.pending = None;
                self.error = Some(format!("cannot list {}: the listing thread stopped", self.dir.display()));
            }
        }
        true
    }

    fn take(&mut self, listing: std::io::Result<Vec<Entry>>) {
        self.pending = None;
        match listing {
            Ok(entries) => self.entries = entries,
            Err(e) => self.error = Some(format!("cannot list {}: {e}", self.dir.display())),
        }
    }

    pub fn show(&mut self, ctx: &egui::Context) -> BrowserAction {
        if !self.poll() {
            // The listing's thread cannot wake the UI: look again shortly.
            ctx.request_repaint_after(Duration::from_millis(50));
        }
        let title = match self.target {
            PickTarget::Var => "Open the VAR or M-VAR checkpoint",
            PickTarget::Vae => "Open the VQVAE checkpoint",
        };
        let mut open = true;
        let mut action = BrowserAction::None;
        let mut go_to: Option<PathBuf> = None;
        egui::Window::new(title).open(&mut open).collapsible(false).default_size([460.0, 380.0]).show(ctx, |ui| {
            ui.horizontal(|ui| {
                if ui.add_enabled(self.dir.parent().is_some(), egui::Button::new("up")).clicked() {
                    go_to = self.dir.parent().map(Path::to_path_buf);
                }
                if let Some(home) = home_dir()
                    && ui.button("home").clicked()
                {
                    go_to = Some(home);
                }
                let location = ui.add(egui::TextEdit::singleline(&mut self.location).desired_width(f32::INFINITY));
                let typed = self.location.trim();
                if location.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) && !typed.is_empty() {
                    // Relative to the folder shown (an absolute path replaces it).
                    let typed = self.dir.join(typed);
                    if typed.is_file() {
                        action = BrowserAction::Picked(self.target, typed);
                    } else {
                        go_to = Some(typed);
                    }
                }
            });
            if ui.checkbox(&mut self.show_all, "show all files").changed() {
                go_to = Some(self.dir.clone());
            }
            ui.separator();
            if let Some(error) = &self.error {
                ui.colored_label(egui::Color32::from_rgb(220, 50, 50), error);
            } else if self.pending.is_some() {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(RichText::new("listing this folder…").weak());
                });
            } else if self.entries.is_empty() {
                ui.label(RichText::new("no folders or checkpoints (.pth, .pt, .safetensors) here").weak());
            }
            let row_height = ui.text_style_height(&egui::TextStyle::Body) + 4.0;
            egui::ScrollArea::vertical().id_salt("file-browser").auto_shrink(false).show_rows(
                ui,
                row_height,
                self.entries.len(),
                |ui, rows| {
                    for entry in &self.entries[rows] {
                        ui.horizontal(|ui| {
                            let text = if entry.is_dir { format!("{}/", entry.name) } else { entry.name.clone() };
                            if ui.selectable_label(false, text).clicked() {
                                if entry.is_dir {
                                    go_to = Some(entry.path.clone());
                                } else {
                                    action = BrowserAction::Picked(self.target, entry.path.clone());
                                }
                            }
                            if !entry.is_dir {
                                ui.label(RichText::new(human_size(entry.bytes)).small().weak());
                            }
                        });
                    }
                },
            );
        });
        if let Some(dir) = go_to {
            self.go(dir);
        }
        if !open && action == BrowserAction::None {
            action = BrowserAction::Closed;
        }
        action
    }
}

/// Folders first, then files, each sorted by name ignoring case; hidden entries (a leading '.')
/// and files that are not checkpoints only when `show_all`.
fn list(dir: &Path, show_all: bool) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let Ok(item) = item else { continue };
        let name = item.file_name().to_string_lossy().into_owned();
        let path = item.path();
        // Follow links so a linked folder opens like a folder; a broken link is skipped.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let is_dir = meta.is_dir();
        // FIFOs, sockets and devices are never checkpoints, whatever their names.
        if !is_dir && !meta.is_file() {
            continue;
        }
        if !show_all && (name.starts_with('.') || (!is_dir && !is_checkpoint(&path))) {
            continue;
        }
        entries.push(Entry { name, path, is_dir, bytes: meta.len() });
    }
    entries.sort_by_cached_key(|e| (!e.is_dir, e.name.to_lowercase()));
    Ok(entries)
}

/// An absolute path with links and `..` resolved, as a user would read it. Windows' canonical form
/// is a verbatim `\\?\C:\...` path that confuses people and some tools, so it gets the plain
/// absolute path there instead.
fn resolve(dir: PathBuf) -> PathBuf {
    if cfg!(windows) { std::path::absolute(&dir).unwrap_or(dir) } else { dir.canonicalize().unwrap_or(dir) }
}

fn is_checkpoint(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .is_some_and(|e| CHECKPOINT_EXTENSIONS.contains(&e.as_str()))
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).map(PathBuf::from).filter(|p| p.is_dir())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_folders_then_checkpoints() {
        let dir = std::env::temp_dir().join(format!("scalewise-browser-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["models", "Archive", ".cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for file in ["var_d16.pth", "b.SAFETENSORS", "notes.txt", ".hidden.pth"] {
            std::fs::write(dir.join(file), b"x").unwrap();
        }
        let names = |show_all| list(&dir, show_all).unwrap().into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(false), ["Archive", "models", "b.SAFETENSORS", "var_d16.pth"]);
        assert_eq!(
            names(true),
            [".cache", "Archive", "models", ".hidden.pth", "b.SAFETENSORS", "notes.txt", "var_d16.pth"]
        );
        assert!(list(&dir.join("missing"), false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sizes_read_like_a_file_manager() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500), "1.5 KB");
        assert_eq!(human_size(1_234_567_890), "1.2 GB");
    }

    /// A listing that outlasts the wait: the folder shows as listing, with no entries (none of the
    /// folder left), until `poll` takes the result; a folder left before its listing came never
    /// shows its entries in another.
    #[test]
    fn slow_listings_arrive_later_and_only_for_their_folder() {
        let dir = std::env::temp_dir().join(format!("scalewise-browser-slow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["a/inner", "b"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("b/model.pth"), b"x").unwrap();
        let mut browser = FileBrowser::open(PickTarget::Var, &dir.display().to_string());
        let until_listed = |browser: &mut FileBrowser| {
            let start = std::time::Instant::now();
            while !browser.poll() {
                assert!(start.elapsed() < Duration::from_secs(30), "the listing never came");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        until_listed(&mut browser);
        assert_eq!(browser.listed(), ["a/", "b/"]);
        browser.go_waiting(dir.join("a"), Duration::ZERO);
        browser.go_waiting(dir.join("b"), Duration::ZERO);
        assert!(browser.pending.is_some() || browser.listed() == ["model.pth"]);
        if browser.pending.is_some() {
            assert!(browser.listed().is_empty(), "the folder left shows nothing while listing");
        }
        until_listed(&mut browser);
        assert!(browser.pending.is_none());
        assert_eq!(browser.dir(), resolve(dir.join("b")));
        assert_eq!(browser.listed(), ["model.pth"], "b's entries, never a's");
        browser.go_waiting(dir.join("missing"), Duration::ZERO);
        until_listed(&mut browser);
        assert!(browser.error.as_deref().is_some_and(|e| e.contains("cannot list")), "{:?}", browser.error);
        assert!(browser.listed().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn opens_at_the_fields_folder() {
        let dir = std::env::temp_dir().join(format!("scalewise-browser-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let field = dir.join("var_d16.pth").display().to_string();
        assert_eq!(FileBrowser::open(PickTarget::Var, &field).dir(), resolve(dir.clone()));
        assert_eq!(FileBrowser::open(PickTarget::Vae, &dir.display().to_string()).dir(), resolve(dir.clone()));
        assert_eq!(FileBrowser::open(PickTarget::Var, "").dir(), resolve(std::env::current_dir().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
