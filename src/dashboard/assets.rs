//! The dashboard's files, embedded at compile time. Plain files with no build step: edit them in
//! `src/dashboard/assets/` and rebuild.

pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

pub const INDEX: Asset = asset!("index.html", HTML);

const FILES: [Asset; 12] = [
    asset!("app.css", CSS),
    asset!("icon.svg", SVG),
    asset!("main.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("stream.js", JS),
    asset!("feed.js", JS),
    asset!("charts.js", JS),
    asset!("users.js", JS),
    asset!("lockouts.js", JS),
    asset!("anomalies.js", JS),
    asset!("pipeline.js", JS),
];

/// The asset called `name`; only the files listed here are ever served.
pub fn find(name: &str) -> Option<&'static Asset> {
    if name == INDEX.name {
        return Some(&INDEX);
    }
    FILES.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_folder_is_listed_and_nothing_else() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/dashboard/assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = FILES
            .iter()
            .chain([&INDEX])
            .map(|a| a.name.to_owned())
            .collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn no_asset_names_another_host() {
        for asset in FILES.iter().chain([&INDEX]) {
            let text = String::from_utf8_lossy(asset.body);
            for needle in ["http://", "https://", "//cdn", "fonts.googleapis"] {
                let hits: Vec<String> = text
                    .match_indices(needle)
                    .map(|(i, _)| text[i..].chars().take(40).collect::<String>())
                    .filter(|hit| !hit.starts_with("http://www.w3.org/2000/svg"))
                    .collect();
                assert!(hits.is_empty(), "{} refers to {hits:?}", asset.name);
            }
        }
    }
}
