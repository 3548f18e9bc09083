//! Conversions that must succeed, and what the layer images hold.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::*;
use crate::image::convert::missing_caps;
use crate::image::{ImageConfig, Limits};

fn base_layer() -> LayerTar {
    LayerTar::new()
        .dir("./")
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/old", b"old\n")
        .dir("opt")
        .dir("opt/keep")
        .file("opt/keep/a", b"a")
        .dir("usr")
        .dir("usr/bin")
        .file_full("usr/bin/tool", b"#!/bin/sh\n", 0o4755, 0, 0)
        .file_full("usr/bin/sgid", b"x", 0o2711, 0, 50)
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .symlink("bin", "usr/bin")
        .dir_full("home", 0o755, 0, 0)
        .dir_full("home/u", 0o700, 1000, 1001)
        .file_full("home/u/.profile", b"export A=1\n", 0o600, 1000, 1001)
        .dir_full("tmp", 0o1777, 0, 0)
        .dir("dev")
        .node("dev/null", EntryType::Char, 0o666, 1, 3)
        .node("dev/sda", EntryType::Block, 0o660, 8, 0)
        .dir("run")
        .node("run/fifo", EntryType::Fifo, 0o640, 0, 0)
}

fn top_layer() -> LayerTar {
    LayerTar::new()
        .whiteout("etc", "old")
        .file("opt/.wh..wh..opq", b"")
        .file("opt/new", b"new")
        .file("etc/added", b"added\n")
}

#[test]
fn two_layers_whiteout_opaque_and_metadata() {
    let t = TestDir::new("two");
    let store = Store::new(t.join("cache")).unwrap();
    let layers = [
        Layer::gz(base_layer().build()),
        Layer::plain(top_layer().build()),
    ];
    write_oci(&t.join("img"), &layers);
    let image = store.import(&t.join("img")).unwrap();

    assert_eq!(image.name, "test:oci");
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.layers[0].diff_id, layers[0].diff_id());
    assert_eq!(image.layers[1].diff_id, layers[1].diff_id());
    assert_eq!(
        image.config,
        ImageConfig {
            entrypoint: Some(vec!["/bin/sh".into()]),
            cmd: Some(vec!["-c".into(), "echo hi".into()]),
            env: vec!["PATH=/usr/bin:/bin".into(), "A=b".into()],
            working_dir: Some("/work".into()),
            user: Some("1000:1000".into()),
        }
    );
    let (base, top) = (&image.layers[0].path, &image.layers[1].path);
    assert_eq!(
        *base,
        t.join("cache/layers")
            .join(format!("{}.ext4", layers[0].diff_id().hex()))
    );
    for img in [base, top] {
        fsck_clean(img);
        assert!(
            !exists(img, "/lost+found"),
            "mkfs's lost+found must not leak into the layer"
        );
    }

    // Bottom layer: owners, modes, links, nodes, times.
    let tool = stat(base, "/usr/bin/tool");
    assert!(tool.contains("Mode:  04755"), "{tool}");
    assert!(tool.contains("Links: 2"), "hard link kept: {tool}");
    assert!(tool.contains(&format!("mtime: {MTIME:#x}")), "{tool}");
    let tool2 = stat(base, "/usr/bin/tool2");
    assert_eq!(inode_of(&tool), inode_of(&tool2));
    assert!(stat(base, "/usr/bin/sgid").contains("Mode:  02711"));
    assert!(stat(base, "/usr/bin/sgid").contains("Group:    50"));
    let home = stat(base, "/home/u");
    assert!(home.contains("User:  1000   Group:  1001"), "{home}");
    assert!(home.contains("Mode:  0700"), "{home}");
    assert!(
        home.contains(&format!("mtime: {MTIME:#x}")),
        "directory mtime kept: {home}"
    );
    assert!(stat(base, "/home/u/.profile").contains("User:  1000   Group:  1001"));
    assert!(stat(base, "/tmp").contains("Mode:  01777"));
    let bin = stat(base, "/bin");
    assert!(
        bin.contains("Type: symlink") && bin.contains("Fast link dest: \"usr/bin\""),
        "{bin}"
    );
    let null = stat(base, "/dev/null");
    assert!(
        null.contains("Type: character special") && null.contains("01:03"),
        "{null}"
    );
    assert!(null.contains("Mode:  0666"), "{null}");
    let sda = stat(base, "/dev/sda");
    assert!(
        sda.contains("Type: block special") && sda.contains("08:00"),
        "{sda}"
    );
    assert!(stat(base, "/run/fifo").contains("Type: FIFO"));
    assert!(stat(base, "/run/fifo").contains("Mode:  0640"));
    assert_eq!(
        debugfs(base, "cat /etc/passwd"),
        "root:x:0:0::/root:/bin/sh\n"
    );
    let root = stat(base, "/");
    assert!(
        root.contains(&format!("mtime: {MTIME:#x}")),
        "root stamped from './': {root}"
    );

    // Top layer: only its changes, whiteouts and opaque directories.
    assert!(
        !exists(top, "/etc/passwd"),
        "a layer holds only its own changes"
    );
    assert_eq!(debugfs(top, "cat /etc/added"), "added\n");
    let old = stat(top, "/etc/old");
    assert!(old.contains("Type: character special"), "{old}");
    assert!(old.contains("number: 00:00"), "{old}");
    assert!(!exists(top, "/etc/.wh.old"));
    let opt = debugfs(top, "ea_list /opt");
    assert!(
        opt.contains("trusted.overlay.opaque") && opt.contains("\"y\""),
        "{opt}"
    );
    assert!(!exists(top, "/opt/.wh..wh..opq"));
    assert!(exists(top, "/opt/new"));
    assert!(
        !debugfs(top, "ea_list /etc").contains("opaque"),
        "only marked directories are opaque"
    );

    // The record lists it.
    let images = store.images().unwrap();
    assert_eq!(images, vec![image]);
}

fn inode_of(stat: &str) -> String {
    stat.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn shared_layer_is_converted_once() {
    let t = TestDir::new("shared");
    let store = Store::new(t.join("cache")).unwrap();
    let base = Layer::gz(LayerTar::new().file("shared", b"base").build());
    let a = Layer::plain(LayerTar::new().file("a", b"a").build());
    let b = Layer::gz(LayerTar::new().file("b", b"b").build());
    write_oci(&t.join("a"), &[base.clone(), a]);
    write_oci(&t.join("b"), &[base.clone(), b]);

    let ia = store.import(&t.join("a")).unwrap();
    assert_eq!(store.conversions(), 2);
    let before = std::fs::metadata(&ia.layers[0].path).unwrap();
    let ib = store.import(&t.join("b")).unwrap();
    assert_eq!(store.conversions(), 3, "the shared layer is a cache hit");
    assert_eq!(ia.layers[0], ib.layers[0]);
    let after = std::fs::metadata(&ib.layers[0].path).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );

    // Re-importing the same image converts nothing.
    store.import(&t.join("a")).unwrap();
    assert_eq!(store.conversions(), 3);
    assert_eq!(store.layers().unwrap().len(), 3);
}

#[test]
fn concurrent_imports_convert_each_layer_once() {
    let t = TestDir::new("concurrent");
    let cache = t.join("cache");
    let layers = [
        Layer::gz(base_layer().build()),
        Layer::plain(top_layer().build()),
    ];
    write_oci(&t.join("img"), &layers);
    let stores: Vec<Store> = (0..3).map(|_| Store::new(&cache).unwrap()).collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .map(|st| s.spawn(|| st.import(&t.join("img"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = results[0].as_ref().unwrap();
    for r in &results {
        assert_eq!(r.as_ref().unwrap(), first);
    }
    assert_eq!(stores.iter().map(Store::conversions).sum::<u64>(), 2);
    fsck_clean(&first.layers[0].path);
    assert_eq!(
        std::fs::read_dir(t.join("cache/layers/.tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn docker_save_archives() {
    let layers = [
        Layer::plain(base_layer().build()),
        Layer::plain(top_layer().build()),
    ];
    for (style, gz) in [
        (Docker::Legacy, false),
        (Docker::OciWithLinks, false),
        (Docker::Legacy, true),
    ] {
        let t = TestDir::new("docker");
        let store = Store::new(t.join("cache")).unwrap();
        write_docker_save(&t.join("img.tar"), &layers, style, gz);
        let image = store.import(&t.join("img.tar")).unwrap();
        assert_eq!(image.name, "test:docker");
        assert_eq!(image.id, Digest::of(&config_json(&layers)));
        assert_eq!(image.layers.len(), 2);
        assert!(stat(&image.layers[0].path, "/usr/bin/tool").contains("Mode:  04755"));
        assert!(stat(&image.layers[1].path, "/etc/old").contains("character special"));
        assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    }
}

#[test]
fn docker_save_unpacked_and_oci_in_tar() {
    let t = TestDir::new("variants");
    let store = Store::new(t.join("cache")).unwrap();
    let layers = [Layer::gz(LayerTar::new().file("x", b"x").build())];
    // An OCI layout packed in a tar (no manifest.json).
    write_oci(&t.join("oci"), &layers);
    let out = Command::new("tar")
        .arg("-C")
        .arg(t.join("oci"))
        .arg("-cf")
        .arg(t.join("oci.tar"))
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    let a = store.import(&t.join("oci.tar")).unwrap();
    assert_eq!(a.name, "test:oci");
    // An unpacked docker-save directory.
    write_docker_save(&t.join("d.tar"), &layers, Docker::Legacy, false);
    std::fs::create_dir(t.join("d")).unwrap();
    let out = Command::new("tar")
        .arg("-C")
        .arg(t.join("d"))
        .arg("-xf")
        .arg(t.join("d.tar"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let b = store.import(&t.join("d")).unwrap();
    assert_eq!(a.layers, b.layers);
    assert_eq!(store.conversions(), 1);
}

#[test]
fn platform_selection_through_nested_index() {
    let t = TestDir::new("platform");
    let store = Store::new(t.join("cache")).unwrap();
    let dir = t.join("img");
    let oci = write_oci(
        &dir,
        &[Layer::plain(LayerTar::new().file("x", b"x").build())],
    );
    let manifest_size = std::fs::metadata(dir.join("blobs/sha256").join(oci.manifest.hex()))
        .unwrap()
        .len();
    let nested = |arm_only: bool| {
        let mut manifests = vec![json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
            "platform": {"architecture": "arm64", "os": "linux"}})];
        if !arm_only {
            manifests.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": oci.manifest.to_string(), "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"}}));
        }
        let inner =
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap();
        let d = put_blob(&dir, &inner);
        let outer = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d.to_string(), "size": inner.len(),
            "annotations": {"io.containerd.image.name": "docker.io/library/multi:1"}}]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&outer).unwrap()).unwrap();
    };
    nested(false);
    let image = store.import(&dir).unwrap();
    assert_eq!(image.name, "docker.io/library/multi:1");
    nested(true);
    let (e, msg) = import_err(&store, &dir);
    assert!(matches!(e, ImageError::Platform { .. }), "{msg}");
    assert!(msg.contains("linux/arm64"), "{msg}");
}

#[test]
fn list_evict_prune() {
    let t = TestDir::new("evict");
    let store = Store::new(t.join("cache")).unwrap();
    let layers = [Layer::plain(LayerTar::new().file("x", b"x").build())];
    write_oci(&t.join("img"), &layers);
    let image = store.import(&t.join("img")).unwrap();
    assert_eq!(store.layers().unwrap(), image.layers);
    assert_eq!(
        store.prune().unwrap(),
        vec![],
        "a recorded image keeps its layers"
    );
    assert!(store.remove_image(&image.id).unwrap());
    assert_eq!(store.prune().unwrap(), vec![layers[0].diff_id()]);
    assert!(store.layers().unwrap().is_empty());
    assert!(!store.evict_layer(&layers[0].diff_id()).unwrap());
    // Importing again converts again.
    store.import(&t.join("img")).unwrap();
    assert_eq!(store.conversions(), 2);
    assert!(store.evict_layer(&layers[0].diff_id()).unwrap());
    assert!(!image.layers[0].path.exists());
}

#[test]
fn leftovers_of_a_crash_are_removed() {
    let t = TestDir::new("leftover");
    let store = Store::new(t.join("cache")).unwrap();
    let layers = [Layer::plain(LayerTar::new().file("x", b"x").build())];
    write_oci(&t.join("img"), &layers);
    let tmp = t.join("cache/layers/.tmp");
    std::fs::create_dir(tmp.join(format!("{}.1.0", layers[0].diff_id().hex()))).unwrap();
    let other = Digest::of(b"other");
    std::fs::write(tmp.join(format!("{}.1.0.ext4", other.hex())), b"partial").unwrap();
    store.import(&t.join("img")).unwrap();
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        1,
        "the converted layer's leftovers go"
    );
    store.clean_tmp().unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn large_and_many_files_fit() {
    let t = TestDir::new("sizing");
    let store = Store::new(t.join("cache")).unwrap();
    let mut l = LayerTar::new().file("big", &vec![7u8; 3 << 20]);
    for i in 0..3000 {
        l = l.file(&format!("d{}/file-with-a-long-name-{i:05}", i % 7), b"x");
    }
    write_oci(&t.join("img"), &[Layer::gz(l.build())]);
    let image = store.import(&t.join("img")).unwrap();
    fsck_clean(&image.layers[0].path);
    assert!(stat(&image.layers[0].path, "/big").contains(&format!("Size: {}", 3 << 20)));
    assert!(exists(
        &image.layers[0].path,
        "/d3/file-with-a-long-name-02999"
    ));
}

#[test]
fn pax_xattrs_and_long_names() {
    let t = TestDir::new("pax");
    let store = Store::new(t.join("cache")).unwrap();
    let long = format!("{}/file", "d".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let xattrs = [
        ("SCHILY.xattr.user.test", &b"v"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        (
            "SCHILY.xattr.security.capability",
            &[
                1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
        ),
        ("mtime", &b"1234567890.5"[..]),
        ("uid", &b"70000"[..]),
    ];
    b.append_pax_extensions(xattrs).unwrap();
    let mut h = Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(2);
    b.append_data(&mut h, &long, &b"hi"[..]).unwrap();
    write_oci(&t.join("img"), &[Layer::plain(b.into_inner().unwrap())]);
    let image = store.import(&t.join("img")).unwrap();
    let img = &image.layers[0].path;
    let path = format!("/{long}");
    let st = stat(img, &path);
    assert!(st.contains("User: 70000"), "{st}");
    assert!(st.contains("mtime: 0x499602d2"), "{st}");
    let ea = debugfs(img, &format!("ea_list {path}"));
    assert!(ea.contains("user.test"), "{ea}");
    assert!(ea.contains("security.capability"), "{ea}");
    assert!(
        !ea.contains("trusted.overlay"),
        "overlay xattrs from the tar are dropped: {ea}"
    );
}

#[test]
fn capability_mask_parsing() {
    assert!(missing_caps("000001ffffffffff").is_empty());
    assert_eq!(missing_caps("0000000000000000").len(), 5);
    let missing = missing_caps("00000000000000ff");
    assert_eq!(missing, vec!["CAP_SYS_ADMIN", "CAP_MKNOD"]);
}

#[test]
fn limits_default_are_sane() {
    let l = Limits::default();
    assert!(l.max_layers >= 100 && l.max_entries >= 100_000 && l.max_json_bytes >= 1 << 20);
}

/// Unmounts on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(args: &[&str], target: &Path) -> Option<Mount> {
    fs::create_dir_all(target).unwrap();
    let ok = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .ok()?
        .status
        .success();
    ok.then(|| Mount(target.to_owned()))
}

/// The real thing: the layer images mounted read-only and stacked with
/// overlayfs give the image's tree, whiteouts and opaque dirs honoured.
#[test]
fn overlay_of_the_layer_images_gives_the_image_tree() {
    let t = TestDir::new("overlay");
    let store = Store::new(t.join("cache")).unwrap();
    let layers = [
        Layer::gz(base_layer().build()),
        Layer::plain(top_layer().build()),
    ];
    write_oci(&t.join("img"), &layers);
    let image = store.import(&t.join("img")).unwrap();
    let (base, top) = (
        image.layers[0].path.display().to_string(),
        image.layers[1].path.display().to_string(),
    );
    let Some(_b) = mount(&["-t", "ext4", "-o", "loop,ro", &base], &t.join("base")) else {
        eprintln!("SKIPPED overlay test: cannot loop-mount here");
        return;
    };
    let Some(_t) = mount(&["-t", "ext4", "-o", "loop,ro", &top], &t.join("top")) else {
        panic!("mounted the base layer but not the top one");
    };
    let lower = format!(
        "lowerdir={}:{}",
        t.join("top").display(),
        t.join("base").display()
    );
    let Some(_o) = mount(
        &["-t", "overlay", "overlay", "-o", &lower],
        &t.join("merged"),
    ) else {
        eprintln!("SKIPPED overlay test: cannot mount overlayfs here");
        return;
    };
    let m = t.join("merged");
    assert_eq!(
        fs::read(m.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert!(!m.join("etc/old").exists(), "whiteout hides the lower file");
    assert_eq!(fs::read(m.join("etc/added")).unwrap(), b"added\n");
    assert!(
        !m.join("opt/keep").exists(),
        "opaque directory hides the lower contents"
    );
    assert_eq!(fs::read(m.join("opt/new")).unwrap(), b"new");
    let tool = fs::metadata(m.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(fs::read_link(m.join("bin")).unwrap(), Path::new("usr/bin"));
    let home = fs::metadata(m.join("home/u")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1001));
    let names: Vec<_> = fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!names.contains(&"lost+found".into()), "{names:?}");
}

#[test]
fn cache_layout_and_permissions() {
    let t = TestDir::new("layout");
    let store = Store::new(t.path().join("cache")).unwrap();
    assert_eq!(store.root(), t.join("cache"));
    let tmp = fs::metadata(t.join("cache/layers/.tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o777, 0o700, "staging trees are root's alone");
    let d = Digest::of(b"x");
    assert_eq!(
        store.layer_path(&d),
        t.join(&format!("cache/layers/{}.ext4", d.hex()))
    );
}

#[test]
fn lost_and_found_of_the_layer_is_kept() {
    let t = TestDir::new("lostfound");
    let store = Store::new(t.join("cache")).unwrap();
    let layers = [
        Layer::plain(
            LayerTar::new()
                .dir_full("lost+found", 0o700, 0, 0)
                .file("lost+found/x", b"x")
                .build(),
        ),
        Layer::plain(LayerTar::new().whiteout(".", "lost+found").build()),
        Layer::plain(
            LayerTar::new()
                .file("f", b"f")
                .hardlink("lost+found", "f")
                .build(),
        ),
    ];
    write_oci(&t.join("img"), &layers);
    let image = store.import(&t.join("img")).unwrap();
    let [dir, whiteout, linked] = [0, 1, 2].map(|i| image.layers[i].path.clone());
    assert!(exists(&dir, "/lost+found/x"));
    let st = stat(&whiteout, "/lost+found");
    assert!(
        st.contains("character special") && st.contains("00:00"),
        "{st}"
    );
    fsck_clean(&whiteout);
    let st = stat(&linked, "/lost+found");
    assert!(
        st.contains("Type: regular") && st.contains("Links: 2"),
        "{st}"
    );
    assert_eq!(debugfs(&linked, "ls /").matches(".vmm-lost").count(), 0);
    fsck_clean(&linked);
}

/// Run by [`conversion_without_root_is_refused_up_front`] in a child
/// process without privileges; does nothing in a normal run.
#[test]
fn non_root_child() {
    let Some(dir) = std::env::var_os("VMM_IMAGE_NONROOT_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = Store::new(dir.join("cache")).unwrap();
    let e = store.import(&dir.join("img")).unwrap_err();
    assert!(matches!(e, ImageError::NotRoot { .. }), "{e}");
    println!("NOTROOT-REFUSED: {e}");
    assert_eq!(
        fs::read_dir(dir.join("cache/layers/.tmp")).unwrap().count(),
        0
    );
}

#[test]
fn conversion_without_root_is_refused_up_front() {
    let Ok(setpriv) = which("setpriv") else {
        eprintln!("SKIPPED non-root test: no setpriv");
        return;
    };
    let t = TestDir::new("nonroot");
    write_oci(
        &t.join("img"),
        &[Layer::plain(LayerTar::new().file("f", b"x").build())],
    );
    let out = Command::new("chmod")
        .arg("-R")
        .arg("a+rwX")
        .arg(t.path())
        .status()
        .unwrap();
    assert!(out.success());
    let mut dir = t.path().to_owned();
    while let Some(parent) = dir.parent() {
        // The test directory must be reachable by nobody (it is under /tmp).
        if fs::metadata(parent).unwrap().mode() & 0o001 == 0 {
            eprintln!("SKIPPED non-root test: {} not searchable", parent.display());
            return;
        }
        dir = parent.to_owned();
    }
    let out = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "image::tests::convert::non_root_child",
            "--nocapture",
        ])
        .env("VMM_IMAGE_NONROOT_CHILD", t.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("NOTROOT-REFUSED: image conversion needs root"),
        "{stdout}"
    );
    assert!(stdout.contains("CAP_MKNOD"), "{stdout}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
