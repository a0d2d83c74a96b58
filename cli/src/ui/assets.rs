//! The page's files, compiled into the binary: no CDN, no network, no
//! Node at build time. The sources in `cli/ui/` are served as they are.

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// File name in `cli/ui/` and URL path below `/`.
    pub name: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static str,
}

/// Every file the page needs.
pub const ASSETS: [Asset; 3] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../ui/app.css"),
    },
];

/// The asset at a URL path (`/` is the page).
pub fn lookup(path: &str) -> Option<&'static Asset> {
    let name = match path {
        "/" => "index.html",
        other => other.strip_prefix('/')?,
    };
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    #[test]
    fn every_file_of_the_page_is_embedded_as_it_is() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let embedded: BTreeSet<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        assert_eq!(on_disk, embedded, "cli/ui/ and ASSETS differ");
        for a in &ASSETS {
            assert_eq!(std::fs::read_to_string(dir.join(a.name)).unwrap(), a.body);
        }
    }

    #[test]
    fn paths_find_assets_and_nothing_else() {
        assert_eq!(lookup("/").unwrap().name, "index.html");
        assert_eq!(
            lookup("/app.js").unwrap().content_type,
            ASSETS[1].content_type
        );
        for missing in ["/../Cargo.toml", "/tests/console.mjs", "", "/app.js/"] {
            assert!(lookup(missing).is_none(), "{missing}");
        }
    }
}
