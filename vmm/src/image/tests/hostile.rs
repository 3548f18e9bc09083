//! Hostile images: each is refused with a message naming the image, layer
//! and entry; nothing appears outside the cache and no partial layer
//! remains in it.

use std::os::unix::fs::MetadataExt;

use tar::EntryType;

use super::*;
use crate::image::Limits;

/// A test directory with a cache and, beside it, `outside/secret`: the
/// target of every escape attempt.
fn setup(name: &str) -> (TestDir, Store) {
    let t = TestDir::new(name);
    fs::create_dir(t.join("outside")).unwrap();
    fs::write(t.join("outside/secret"), b"secret").unwrap();
    let store = Store::new(t.join("cache")).unwrap();
    (t, store)
}

/// `outside` is as it was; the cache holds no layer image, no staging
/// leftovers and no image record.
fn assert_clean(t: &TestDir) {
    let outside: Vec<_> = fs::read_dir(t.join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("secret")],
        "something was written outside the cache"
    );
    let secret = t.join("outside/secret");
    assert_eq!(fs::read(&secret).unwrap(), b"secret");
    assert_eq!(
        fs::metadata(&secret).unwrap().nlink(),
        1,
        "the secret was hard-linked"
    );
    assert_eq!(
        fs::metadata(t.join("outside"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    let ext4: Vec<_> = fs::read_dir(t.join("cache/layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ext4"))
        .collect();
    assert!(ext4.is_empty(), "partial layer left in the cache: {ext4:?}");
    assert_eq!(
        fs::read_dir(t.join("cache/layers/.tmp")).unwrap().count(),
        0,
        "staging left behind"
    );
    assert_eq!(fs::read_dir(t.join("cache/images")).unwrap().count(), 0);
}

use std::os::unix::fs::PermissionsExt;

/// Import a one-layer OCI image of `tar`; it must be refused with an entry
/// error naming `entry`.
fn refuse_entry(name: &str, tar: Vec<u8>, entry: &str, reason: &str) {
    let (t, store) = setup(name);
    let layer = Layer::plain(tar);
    write_oci(&t.join("img"), std::slice::from_ref(&layer));
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(matches!(e, ImageError::Entry { .. }), "{msg}");
    assert!(
        msg.contains(&t.join("img").display().to_string()),
        "names the image: {msg}"
    );
    assert!(
        msg.contains(&format!("layer 0 ({})", layer.diff_id())),
        "names the layer: {msg}"
    );
    assert!(
        msg.contains(&format!("{entry:?}")),
        "names the entry {entry:?}: {msg}"
    );
    assert!(msg.contains(reason), "says why ({reason}): {msg}");
    assert_clean(&t);
}

const ESCAPE: &str = "../../../../outside";

#[test]
fn dotdot_entries_are_refused() {
    let cases = [
        format!("{ESCAPE}/pwned"),
        format!("a/../{ESCAPE}/pwned"),
        "x/..".to_string(),
    ];
    for path in cases {
        let tar = LayerTar::new()
            .file("ok", b"ok")
            .raw(path.as_bytes(), EntryType::Regular, b"", b"pwned")
            .build();
        refuse_entry("dotdot", tar, &path, "'..'");
    }
    let tar = LayerTar::new()
        .raw(
            format!("{ESCAPE}/d").as_bytes(),
            EntryType::Directory,
            b"",
            b"",
        )
        .build();
    refuse_entry("dotdot-dir", tar, &format!("{ESCAPE}/d"), "'..'");
}

#[test]
fn absolute_paths_stay_inside_the_layer() {
    let (t, store) = setup("abs");
    let abs = format!("{}/abs", t.join("outside").display());
    let tar = LayerTar::new()
        .raw(abs.as_bytes(), EntryType::Regular, b"", b"data")
        .build();
    write_oci(&t.join("img"), &[Layer::plain(tar)]);
    let image = store.import(&t.join("img")).unwrap();
    assert_eq!(
        debugfs(&image.layers[0].path, &format!("cat {abs}")),
        "data"
    );
    assert!(!t.join("outside/abs").exists());
    assert_eq!(fs::read(t.join("outside/secret")).unwrap(), b"secret");
}

#[test]
fn writes_through_a_planted_symlink_are_refused() {
    // (link target absolute or relative, entry written through it, type)
    let cases = [
        (true, "a/pwned", EntryType::Regular),
        (false, "a/pwned", EntryType::Regular),
        (true, "a/sub/deeper", EntryType::Directory),
        (true, "a/.wh.secret", EntryType::Regular),
        (true, "a/.wh..wh..opq", EntryType::Regular),
        (true, "a/link", EntryType::Symlink),
    ];
    for (absolute, entry, kind) in cases {
        let (t, store) = setup("symlink");
        let target = if absolute {
            t.join("outside").display().to_string()
        } else {
            ESCAPE.to_string()
        };
        let tar = LayerTar::new()
            .symlink("a", &target)
            .raw(entry.as_bytes(), kind, b"/etc/passwd", b"")
            .build();
        let layer = Layer::plain(tar);
        write_oci(&t.join("img"), &[layer]);
        let (e, msg) = import_err(&store, &t.join("img"));
        assert!(matches!(e, ImageError::Entry { .. }), "{msg}");
        assert!(
            msg.contains(&format!("{entry:?}")) && msg.contains("symbolic link"),
            "{msg}"
        );
        assert_clean(&t);
        let opaque = has_xattr(&t.join("outside"), "trusted.overlay.opaque");
        assert!(!opaque, "an opaque marker reached a directory outside");
    }
}

#[test]
fn a_file_replacing_a_symlink_does_not_write_through_it() {
    let (t, store) = setup("replace");
    let secret = t.join("outside/secret").display().to_string();
    let tar = LayerTar::new()
        .symlink("f", &secret)
        .file("f", b"pwned")
        .build();
    write_oci(&t.join("img"), &[Layer::plain(tar)]);
    let image = store.import(&t.join("img")).unwrap();
    assert_eq!(debugfs(&image.layers[0].path, "cat /f"), "pwned");
    assert!(stat(&image.layers[0].path, "/f").contains("Type: regular"));
    assert_eq!(fs::read(t.join("outside/secret")).unwrap(), b"secret");
}

#[test]
fn hardlink_escapes_are_refused() {
    let (t, _) = setup("hl-names");
    let abs = format!("{}/secret", t.join("outside").display());
    drop(t);
    let cases = [
        (format!("{ESCAPE}/secret"), "'..'"),
        (abs, "not an earlier file of this layer"),
        ("s/secret".to_string(), "not an earlier file of this layer"),
        ("missing".to_string(), "not an earlier file of this layer"),
        ("d".to_string(), "hard link to a directory"),
        ("h".to_string(), "hard link to itself"),
    ];
    for (target, reason) in cases {
        let (t, store) = setup("hardlink");
        let tar = LayerTar::new()
            .symlink("s", &t.join("outside").display().to_string())
            .dir("d")
            .raw(b"h", EntryType::Link, target.as_bytes(), b"")
            .build();
        let layer = Layer::plain(tar);
        write_oci(&t.join("img"), &[layer]);
        let (e, msg) = import_err(&store, &t.join("img"));
        assert!(matches!(e, ImageError::Entry { .. }), "{msg}");
        assert!(
            msg.contains("\"h\"") && msg.contains(reason),
            "{target}: {msg}"
        );
        assert_clean(&t);
    }
}

#[test]
fn blob_digest_mismatch_is_refused() {
    let (t, store) = setup("digest");
    let oci = write_oci(
        &t.join("img"),
        &[Layer::gz(LayerTar::new().file("f", b"data").build())],
    );
    let blob = t.join("img/blobs/sha256").join(oci.layer_digests[0].hex());
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // same size, different content
    fs::write(&blob, bytes).unwrap();
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(
        matches!(
            e,
            ImageError::DigestMismatch { .. } | ImageError::Layer { .. }
        ),
        "{msg}"
    );
    assert_clean(&t);

    // A gzip whose content is intact but whose bytes differ (another
    // compression level) still fails the blob digest.
    let (t, store) = setup("digest2");
    let layer = Layer::gz(LayerTar::new().file("f", b"data").build());
    let oci = write_oci(&t.join("img"), &[layer]);
    let blob = t.join("img/blobs/sha256").join(oci.layer_digests[0].hex());
    let mut bytes = fs::read(&blob).unwrap();
    bytes[4..8].copy_from_slice(&[1, 2, 3, 4]); // gzip mtime field: content unchanged
    fs::write(&blob, bytes).unwrap();
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&format!("blob blobs/sha256/{}", oci.layer_digests[0].hex())),
        "{msg}"
    );
    assert_clean(&t);
}

#[test]
fn diff_id_mismatch_is_refused() {
    // Legacy docker save: no blob digest, only the config's diff-ids.
    let (t, store) = setup("diffid");
    let layer = Layer::plain(LayerTar::new().file("f", b"original-content").build());
    write_docker_save(&t.join("img.tar"), &[layer], Docker::Legacy, false);
    let mut bytes = fs::read(t.join("img.tar")).unwrap();
    let pos = bytes.windows(8).position(|w| w == b"original").unwrap();
    bytes[pos..pos + 8].copy_from_slice(b"ALTERED!");
    fs::write(t.join("img.tar"), bytes).unwrap();
    let (e, msg) = import_err(&store, &t.join("img.tar"));
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains("layer 0 (uncompressed tar"), "{msg}");
    assert_clean(&t);
}

#[test]
fn blob_size_mismatch_is_refused() {
    let (t, store) = setup("size");
    let oci = write_oci(
        &t.join("img"),
        &[Layer::plain(LayerTar::new().file("f", b"x").build())],
    );
    let blob = t.join("img/blobs/sha256").join(oci.layer_digests[0].hex());
    let mut bytes = fs::read(&blob).unwrap();
    bytes.truncate(bytes.len() - 512);
    fs::write(&blob, bytes).unwrap();
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(matches!(e, ImageError::BlobSize { .. }), "{msg}");
    assert_clean(&t);
}

#[test]
fn truncated_layers_are_refused() {
    let tar = LayerTar::new()
        .file("a", b"a")
        .file("big", &vec![1u8; 100_000])
        .build();
    let full_gz = gzip(&tar);
    let cases = [
        ("mid-data", false, tar[..50_000].to_vec()),
        ("at-header", false, tar[..1024].to_vec()),
        ("gzip", true, full_gz[..full_gz.len() / 2].to_vec()),
        ("gzip-trailer", true, full_gz[..full_gz.len() - 4].to_vec()),
    ];
    for (name, gz, blob) in cases {
        for docker in [true, false] {
            let (t, store) = setup(name);
            let layer = Layer {
                tar: tar.clone(),
                gzip: gz,
                blob: Some(blob.clone()),
            };
            let img = if docker {
                write_docker_save(&t.join("img.tar"), &[layer], Docker::Legacy, false);
                t.join("img.tar")
            } else {
                // Descriptor consistent with the truncated blob: only the
                // diff-id or the stream itself can tell.
                write_oci(&t.join("img"), &[layer]);
                t.join("img")
            };
            let (e, msg) = import_err(&store, &img);
            assert!(
                matches!(
                    e,
                    ImageError::Layer { .. } | ImageError::DigestMismatch { .. }
                ),
                "{name}: {msg}"
            );
            assert!(msg.contains("truncated"), "{name}: {msg}");
            assert_clean(&t);
        }
    }
}

#[test]
fn missing_blobs_are_refused() {
    let (t, store) = setup("missing");
    let oci = write_oci(
        &t.join("img"),
        &[Layer::plain(LayerTar::new().file("f", b"x").build())],
    );
    let path = format!("blobs/sha256/{}", oci.layer_digests[0].hex());
    fs::remove_file(t.join("img").join(&path)).unwrap();
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(
        matches!(e, ImageError::MissingBlob { .. }) && msg.contains(&path),
        "{msg}"
    );
    assert_clean(&t);

    // The manifest itself missing.
    fs::remove_file(t.join("img/blobs/sha256").join(oci.manifest.hex())).unwrap();
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(matches!(e, ImageError::MissingBlob { .. }), "{msg}");

    // No image at all, or not an image.
    let (e, msg) = import_err(&store, &t.join("nothing"));
    assert!(
        matches!(e, ImageError::Open { .. }) && msg.contains("nothing"),
        "{msg}"
    );
    let (e, msg) = import_err(&store, &t.join("outside"));
    assert!(matches!(e, ImageError::UnknownFormat { .. }), "{msg}");
    let (e, msg) = import_err(&store, &t.join("outside/secret"));
    assert!(matches!(e, ImageError::UnknownFormat { .. }), "{msg}");
    assert_clean(&t);
}

#[test]
fn blob_symlinked_out_of_the_layout_is_refused() {
    let (t, store) = setup("bloblink");
    let oci = write_oci(
        &t.join("img"),
        &[Layer::plain(LayerTar::new().file("f", b"x").build())],
    );
    let blob = t.join("img/blobs/sha256").join(oci.layer_digests[0].hex());
    fs::rename(&blob, t.join("moved")).unwrap();
    std::os::unix::fs::symlink(t.join("moved"), &blob).unwrap();
    let (_, msg) = import_err(&store, &t.join("img"));
    assert!(msg.contains(oci.layer_digests[0].hex()), "{msg}");
    assert_clean(&t);
}

#[test]
fn escaping_names_in_manifests_are_refused() {
    let (t, store) = setup("names");
    let dir = t.join("img");
    let oci = write_oci(
        &dir,
        &[Layer::plain(LayerTar::new().file("f", b"x").build())],
    );
    let path = dir.join("blobs/sha256").join(oci.manifest.hex());
    let manifest = fs::read_to_string(&path).unwrap();
    let bad = manifest.replace(
        &oci.layer_digests[0].to_string(),
        "sha256:../../../../outside/secret",
    );
    let d = Digest::of(bad.as_bytes());
    fs::write(dir.join("blobs/sha256").join(d.hex()), &bad).unwrap();
    let index = fs::read_to_string(dir.join("index.json")).unwrap();
    let index = index
        .replace(&oci.manifest.to_string(), &d.to_string())
        .replace(
            &format!("\"size\":{}", manifest.len()),
            &format!("\"size\":{}", bad.len()),
        );
    fs::write(dir.join("index.json"), index).unwrap();
    let (e, msg) = import_err(&store, &dir);
    assert!(
        matches!(e, ImageError::Manifest { .. }) && msg.contains("malformed digest"),
        "{msg}"
    );

    let layer = Layer::plain(LayerTar::new().file("f", b"x").build());
    write_docker_save(&t.join("d.tar"), &[layer], Docker::Legacy, false);
    fs::create_dir(t.join("d")).unwrap();
    assert!(Command::new("tar")
        .arg("-C")
        .arg(t.join("d"))
        .arg("-xf")
        .arg(t.join("d.tar"))
        .status()
        .unwrap()
        .success());
    let m = fs::read_to_string(t.join("d/manifest.json")).unwrap();
    let m = m.replacen("\"Layers\":[\"", "\"Layers\":[\"../../outside/", 1);
    fs::write(t.join("d/manifest.json"), m).unwrap();
    let (e, msg) = import_err(&store, &t.join("d"));
    assert!(
        matches!(e, ImageError::Manifest { .. }) && msg.contains("leaves the archive"),
        "{msg}"
    );
    assert_clean(&t);
}

#[test]
fn absurd_sizes_and_counts_are_bounded() {
    let small = Limits {
        max_entries: 5,
        max_layer_bytes: 1 << 20,
        ..Limits::default()
    };
    // Too many entries.
    let (t, store) = setup("entries");
    let store = store.with_limits(small.clone());
    let mut l = LayerTar::new();
    for i in 0..10 {
        l = l.file(&format!("f{i}"), b"");
    }
    write_oci(&t.join("img"), &[Layer::plain(l.build())]);
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(
        matches!(e, ImageError::Limit { .. }) && msg.contains("entries"),
        "{msg}"
    );
    assert_clean(&t);

    // A header claiming a huge file: refused before reading it.
    let (t, store) = setup("huge");
    let store = store.with_limits(small.clone());
    let mut h = Header::new_gnu();
    h.set_path("huge").unwrap();
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[0u8; 4096]);
    write_oci(&t.join("img"), &[Layer::plain(tar)]);
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(
        matches!(e, ImageError::Limit { .. }) && msg.contains("\"huge\""),
        "{msg}"
    );
    assert_clean(&t);

    // A gzip bomb: 64 MiB of zeros in a small blob.
    let (t, store) = setup("bomb");
    let store = store.with_limits(small);
    let tar = LayerTar::new().file("zeros", &vec![0u8; 64 << 20]).build();
    write_oci(&t.join("img"), &[Layer::gz(tar)]);
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(matches!(e, ImageError::Limit { .. }), "{msg}");
    assert_clean(&t);

    // A GNU long name larger than any path.
    let (t, store) = setup("longname");
    let mut tar = Vec::new();
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(&[b'a'; 8192]);
    write_oci(&t.join("img"), &[Layer::plain(tar)]);
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(
        matches!(e, ImageError::Layer { .. }) && msg.contains("GNU long name"),
        "{msg}"
    );
    assert_clean(&t);
}

#[test]
fn unsupported_compression_is_refused() {
    let (t, store) = setup("zstd");
    let mut layer = Layer::plain(LayerTar::new().file("f", b"x").build());
    layer.blob = Some([&[0x28u8, 0xb5, 0x2f, 0xfd][..], &[0u8; 60]].concat());
    write_oci(&t.join("img"), &[layer]);
    let (e, msg) = import_err(&store, &t.join("img"));
    assert!(
        matches!(e, ImageError::Unsupported { .. }) && msg.contains("zstd"),
        "{msg}"
    );
    assert_clean(&t);
}
