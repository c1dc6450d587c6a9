//! Class names: ImageNet's 1000 for the official VAR checkpoints (which carry no names), and the
//! lookup of a class by number or name that the CLI and the app share.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// assets/imagenet_classes.txt: `#` comment lines, then one name per line in class-id order
/// (written by scripts/imagenet_classes.py).
const IMAGENET_TXT: &str = include_str!("../assets/imagenet_classes.txt");

/// Number of ImageNet classes: a VAR checkpoint with this many classes and no names of its own is
/// taken to be an ImageNet model.
pub const IMAGENET_CLASSES: usize = 1000;

/// The 1000 ImageNet (ILSVRC-2012) class names, index = class id ("golden retriever" is 207).
pub fn imagenet() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        IMAGENET_TXT.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(str::to_owned).collect()
    })
}

/// How many close names an "unknown class" error suggests.
const SUGGESTIONS: usize = 12;

/// The class id of `text` among `num_classes` classes named `names` (empty: numbers only).
///
/// A number selects that class. A name matches exactly first, then ignoring case; a name two
/// classes share ignoring case (ImageNet's "Cardigan", the corgi, and "cardigan", the sweater) must
/// be spelled exactly or given by number. Unknown names get an error that suggests the names
/// containing the text, or all of them when there are few.
pub fn resolve(names: &[String], num_classes: usize, text: &str) -> Result<usize> {
    let text = text.trim();
    let error = |msg: String| Error::InvalidArgument { op: "class", msg };
    if num_classes == 0 {
        return Err(error("this model has no classes".into()));
    }
    if text.is_empty() {
        return Err(error("an empty class name (a stray comma in --class?)".into()));
    }
    if let Ok(id) = text.parse::<usize>() {
        if id >= num_classes {
            return Err(error(format!(
                "class {id} is outside 0..={} (this model has {num_classes} classes)",
                num_classes - 1
            )));
        }
        return Ok(id);
    }
    if names.is_empty() {
        return Err(error(format!(
            "{text:?} is not a class number (this model's classes are 0..={} and have no names)",
            num_classes - 1
        )));
    }
    // Exact spelling first, then ignoring case. A file's own names may repeat one exactly: a name
    // several classes share is ambiguous at either step, not the first of them.
    let lower = text.to_lowercase();
    let exact: Vec<usize> = (0..names.len()).filter(|&i| names[i] == text).collect();
    let folded: Vec<usize> = (0..names.len()).filter(|&i| names[i].to_lowercase() == lower).collect();
    for (ids, hint) in [(exact, "give the number"), (folded, "spell the name exactly or give the number")] {
        match ids.as_slice() {
            [id] => return Ok(*id),
            [] => {}
            several => {
                return Err(error(format!("{text:?} names several classes ({}); {hint}", listing(names, several))));
            }
        }
    }
    if names.len() <= 2 * SUGGESTIONS {
        let all: Vec<_> = names.iter().map(|n| crate::error::shown(n)).collect();
        return Err(error(format!("unknown class {text:?}; this model's classes are: {}", all.join(", "))));
    }
    let matches = search(names, num_classes, text);
    Err(error(if matches.is_empty() {
        format!("unknown class {text:?}: no class name contains it (the {} names: `scalewise classes`)", names.len())
    } else {
        let shown = &matches[..matches.len().min(SUGGESTIONS)];
        let more = matches.len() - shown.len();
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("unknown class {text:?}; did you mean {}{more}?", listing(names, shown))
    }))
}

/// The ids among `num_classes` classes named `names` (empty: unnamed) that match every word of
/// `query`, in id order; all ids for an empty query. A word matches a name containing it (ignoring
/// case) or the class's number, so "207" finds class 207 and "golden ret" finds "golden retriever".
pub fn search(names: &[String], num_classes: usize, query: &str) -> Vec<usize> {
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    (0..num_classes)
        .filter(|&id| {
            let name = names.get(id).map(|n| n.to_lowercase()).unwrap_or_default();
            words.iter().all(|w| name.contains(w.as_str()) || id.to_string() == *w)
        })
        .collect()
}

fn listing(names: &[String], ids: &[usize]) -> String {
    ids.iter().map(|&i| format!("{i} \"{}\"", crate::error::shown(&names[i]))).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_names_are_the_ilsvrc_order() {
        let names = imagenet();
        assert_eq!(names.len(), IMAGENET_CLASSES);
        // Spot checks across the range, from the published label order.
        assert_eq!(names[0], "tench");
        assert_eq!(names[1], "goldfish");
        assert_eq!(names[207], "golden retriever");
        assert_eq!(names[281], "tabby");
        assert_eq!(names[388], "giant panda");
        assert_eq!(names[980], "volcano");
        assert_eq!(names[999], "toilet tissue");
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), IMAGENET_CLASSES);
        assert!(names.iter().all(|n| !n.contains(',') && n.trim() == n && !n.is_empty()));
    }

    #[test]
    fn resolves_numbers_names_and_case() {
        let names = imagenet();
        assert_eq!(resolve(names, 1000, "207").unwrap(), 207);
        assert_eq!(resolve(names, 1000, " golden retriever ").unwrap(), 207);
        assert_eq!(resolve(names, 1000, "Golden Retriever").unwrap(), 207);
        assert_eq!(resolve(names, 1000, "labrador retriever").unwrap(), 208);
        // Same name ignoring case: exact spelling decides, folded spelling is refused.
        assert_eq!(resolve(names, 1000, "Cardigan").unwrap(), 264);
        assert_eq!(resolve(names, 1000, "cardigan").unwrap(), 474);
        let e = resolve(names, 1000, "CARDIGAN").unwrap_err().to_string();
        assert!(e.contains("264") && e.contains("474"), "{e}");
        assert!(resolve(names, 1000, "1000").unwrap_err().to_string().contains("0..=999"));
        assert!(resolve(names, 1000, " ").unwrap_err().to_string().contains("empty class name"));
        // Case folding is Unicode's, as in search.
        let accented: Vec<String> = ["Café", "tea"].map(String::from).to_vec();
        assert_eq!(resolve(&accented, 2, "CAFÉ").unwrap(), 0);
        // A file's own names may repeat one exactly: that name is ambiguous, not the first of them.
        let repeated: Vec<String> = ["x", "y", "x"].map(String::from).to_vec();
        let e = resolve(&repeated, 3, "x").unwrap_err().to_string();
        assert!(e.contains("0 \"x\"") && e.contains("2 \"x\""), "{e}");
        assert_eq!(resolve(&repeated, 3, "y").unwrap(), 1);
    }

    #[test]
    fn unknown_names_suggest_close_ones() {
        let names = imagenet();
        let e = resolve(names, 1000, "retriever").unwrap_err().to_string();
        assert!(e.contains("207 \"golden retriever\"") && e.contains("208 \"Labrador retriever\""), "{e}");
        let e = resolve(names, 1000, "terrier").unwrap_err().to_string();
        assert!(e.contains("more?"), "many matches are cut short: {e}");
        let e = resolve(names, 1000, "qwertyuiop").unwrap_err().to_string();
        assert!(e.contains("no class name contains it"), "{e}");
        let few: Vec<String> = ["red", "green"].map(String::from).to_vec();
        let e = resolve(&few, 2, "blue").unwrap_err().to_string();
        assert!(e.contains("red, green"), "{e}");
        let e = resolve(&[], 5, "cat").unwrap_err().to_string();
        assert!(e.contains("0..=4") && e.contains("no names"), "{e}");
    }

    #[test]
    fn search_matches_every_word_and_ids() {
        let names = imagenet();
        assert_eq!(search(names, 1000, "golden ret"), vec![207]);
        assert_eq!(search(names, 1000, "RETRIEVER GOLDEN"), vec![207]);
        assert!(search(names, 1000, "207").contains(&207));
        assert_eq!(search(names, 1000, "").len(), 1000);
        assert_eq!(search(names, 1000, "shark"), vec![2, 3]);
        // Unnamed classes are found by number only.
        assert_eq!(search(&[], 300, "207"), vec![207]);
        assert_eq!(search(&[], 300, "").len(), 300);
        assert!(search(&[], 300, "dog").is_empty());
    }
}
