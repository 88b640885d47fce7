//! The demo's web image, assembled here without docker or a network: one
//! gzip layer holding the host's static busybox and a page naming the
//! version, and an OCI config built the way people write Dockerfiles —
//! `EXPOSE 8080`, no `$PORT`, a shell-form `CMD` — pushed to a registry
//! over the distribution API (monolithic blob uploads, manifest PUT).

use std::io::Write as _;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The port the image's server listens on, fixed in its `CMD` and declared
/// by `EXPOSE`, as most images do.
pub const PORT: u16 = 8080;

/// Busybox applets the image links (`/bin/<applet>` → busybox).
const APPLETS: [&str; 5] = ["sh", "httpd", "echo", "sleep", "cat"];

/// An image ready to push: its blobs and manifest.
pub struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
    /// `sha256:<hex>` of the manifest: what the registry names the image by.
    pub digest: String,
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The web image of `version`: busybox's `httpd` serving a page that says
/// `hello from <version>`.
pub fn web(busybox: &[u8], version: &str) -> Result<Image> {
    let page = format!("hello from {version}\n");
    let mut tar = tar::Builder::new(Vec::new());
    let dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, std::io::empty())
    };
    let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, data)
    };
    dir(&mut tar, "bin", 0o755)?;
    file(&mut tar, "bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    dir(&mut tar, "tmp", 0o1777)?;
    dir(&mut tar, "www", 0o755)?;
    file(&mut tar, "www/index.html", 0o644, page.as_bytes())?;
    let raw = tar.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)?;
    let layer = gz.finish()?;

    // As `EXPOSE 8080` and `CMD echo … && httpd -f -p 8080 -h /www` write
    // it: the server's port is its own, and a shell runs it.
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", format!("VERSION={version}")],
            "ExposedPorts": { format!("{PORT}/tcp"): {} },
            "Cmd": [
                "/bin/sh", "-c",
                format!("echo \"demo $VERSION listening on :{PORT}\" && httpd -f -p {PORT} -h /www"),
            ],
        },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&raw)] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": CONFIG, "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": LAYER, "digest": sha256(&layer), "size": layer.len() }],
    }))?;
    Ok(Image {
        digest: sha256(&manifest),
        config,
        layer,
        manifest,
    })
}

/// Pushes `image` as `<registry>/<repo>:<tag>` (`registry` is
/// `http://host:port`).
pub async fn push(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    tag: &str,
    image: &Image,
) -> Result<()> {
    for blob in [&image.config, &image.layer] {
        let started = http
            .post(format!("{registry}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .context("starting a blob upload")?;
        if started.status() != reqwest::StatusCode::ACCEPTED {
            bail!("starting a blob upload: {}", started.status());
        }
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .context("the registry gave no upload location")?;
        let location = if location.starts_with("http") {
            location.to_owned()
        } else {
            format!("{registry}{location}")
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = http
            .put(format!("{location}{sep}digest={}", sha256(blob)))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .await
            .context("uploading a blob")?;
        if put.status() != reqwest::StatusCode::CREATED {
            bail!("uploading a blob: {}", put.status());
        }
    }
    let put = http
        .put(format!("{registry}/v2/{repo}/manifests/{tag}"))
        .header(reqwest::header::CONTENT_TYPE, MANIFEST)
        .body(image.manifest.clone())
        .send()
        .await
        .context("pushing the manifest")?;
    if put.status() != reqwest::StatusCode::CREATED {
        bail!("pushing the manifest: {}", put.status());
    }
    Ok(())
}
