//! The browser client's build (`cargo xtask build-web`) and its browser tests.
//!
//! The package lands in `target/web/pkg/` (under Cargo's target directory): the ES module
//! `lattice_client.js`, `lattice_client_bg.wasm`, the TypeScript declarations, the Yjs bridge
//! (`yjs.js`, imported as `lattice-client/yjs`) and a `package.json` named `lattice-client`, so
//! an application can depend on the folder. The module is wasm-bindgen's output run through
//! wasm-opt ([`WASM_OPT_PASSES`]). The demo page is bundled from `client-wasm/demo`
//! with esbuild into `target/web/demo/`, the folder `lattice serve --web-dir` serves. Nothing
//! built is committed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cmd, output, setup};

/// The Cargo profile of the browser build (see the workspace `Cargo.toml`).
const PROFILE: &str = "web-release";
const TARGET: &str = "wasm32-unknown-unknown";
/// Size the gzipped wasm should stay under; reported, not enforced.
const WASM_GZIP_TARGET_BYTES: usize = 200 * 1024;

/// Cargo's target directory of the workspace.
pub(crate) fn target_dir() -> Result<PathBuf> {
    let metadata = output("cargo", &["metadata", "--format-version", "1", "--no-deps"])?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata)?;
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(target))
}

/// Where `build-web` puts the package.
pub(crate) fn package_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("web").join("pkg"))
}

fn client_version() -> Result<String> {
    let metadata = output("cargo", &["metadata", "--format-version", "1", "--no-deps"])?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata)?;
    metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages
                .iter()
                .find(|p| p["name"] == "lattice-client")
                .and_then(|p| p["version"].as_str())
        })
        .map(str::to_owned)
        .context("cargo metadata does not list lattice-client")
}

/// Builds the wasm package into `target/web/pkg`, writes its `package.json`, and checks the
/// generated TypeScript declarations with `tsc`.
pub(crate) fn build() -> Result<PathBuf> {
    setup::web_tools()?;
    let want = setup::locked_wasm_bindgen_version()?;
    let have = output("wasm-bindgen", &["--version"])?;
    if have.split_whitespace().nth(1) != Some(want.as_str()) {
        bail!(
            "wasm-bindgen {} is installed but Cargo.lock has {want}; run `cargo xtask setup`",
            have.trim()
        );
    }
    cmd(
        "cargo",
        &[
            "build",
            "-p",
            "lattice-client",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
        ],
    )?;
    let wasm = target_dir()?
        .join(TARGET)
        .join(PROFILE)
        .join("lattice_client.wasm");
    let pkg = package_dir()?;
    if pkg.exists() {
        std::fs::remove_dir_all(&pkg).with_context(|| format!("cannot clear {}", pkg.display()))?;
    }
    let pkg_str = pkg.to_str().context("non-UTF-8 target directory")?;
    let wasm_str = wasm.to_str().context("non-UTF-8 target directory")?;
    cmd(
        "wasm-bindgen",
        &[
            "--target",
            "web",
            "--remove-name-section",
            "--remove-producers-section",
            "--out-dir",
            pkg_str,
            wasm_str,
        ],
    )?;
    shrink(&pkg.join("lattice_client_bg.wasm"))?;
    for file in ["yjs.js", "yjs.d.ts"] {
        let from = Path::new(setup::WEB_TOOLS_DIR).join("src").join(file);
        std::fs::copy(&from, pkg.join(file))
            .with_context(|| format!("cannot copy {}", from.display()))?;
    }
    write_package_json(&pkg)?;
    // `usage.ts` imports the package from `target/web/pkg`, checked in strict mode.
    cmd(
        &format!("{}/node_modules/.bin/tsc", setup::WEB_TOOLS_DIR),
        &["-p", &format!("{}/tsconfig.json", setup::WEB_TOOLS_DIR)],
    )?;
    report_size(
        &pkg.join("lattice_client_bg.wasm"),
        &pkg.join("lattice_client.js"),
    )?;
    build_demo(&pkg)?;
    Ok(pkg)
}

/// The binaryen passes `build-web` runs on the wasm-bindgen output, chosen for the size of the
/// *gzipped* module: about 4 KB less. The `-O`/`-Os`/`-Oz` presets make the file smaller but its
/// gzip larger (reordering functions and inlining break up the repetition gzip feeds on: up to
/// 30 KB more), so the passes are named one by one; each of them helps (docs/client.md, Size).
const WASM_OPT_PASSES: &[&str] = &[
    "--converge",
    "--strip-target-features",
    "--duplicate-function-elimination",
    "--remove-unused-module-elements",
    "--remove-unused-brs",
    "--optimize-instructions",
    "--vacuum",
    "--rse",
    "--merge-blocks",
    "--coalesce-locals-learning",
    "--simplify-locals-nostructure",
    "--remove-unused-names",
    "--precompute",
    "--code-folding",
];

/// Runs wasm-opt (npm's `binaryen`, locked in the web tools; never Debian's, whose version 108
/// breaks wasm-bindgen's output) over `wasm` in place.
fn shrink(wasm: &Path) -> Result<()> {
    let wasm = wasm.to_str().context("non-UTF-8 target directory")?;
    let mut args = WASM_OPT_PASSES.to_vec();
    args.extend([wasm, "-o", wasm]);
    cmd(
        &format!("{}/node_modules/.bin/wasm-opt", setup::WEB_TOOLS_DIR),
        &args,
    )
}

/// Where `build-web` puts the demo page (what `lattice serve --web-dir` serves).
pub(crate) fn demo_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("web").join("demo"))
}

/// Bundles `client-wasm/demo/main.js` (CodeMirror, yjs, the package) and `tiptap.js` (Tiptap,
/// the Hocuspocus provider) into `target/web/demo/` with the pages, their styles and the wasm.
fn build_demo(pkg: &Path) -> Result<()> {
    let out = demo_dir()?;
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let tools = std::env::current_dir()?.join(setup::WEB_TOOLS_DIR);
    let esbuild = tools.join("node_modules/.bin/esbuild");
    let bundle = out.join("demo.js");
    // Two pages: the CodeMirror demo (`main.js` → `demo.js`) and the Tiptap page (`tiptap.js`).
    let args = [
        "demo=client-wasm/demo/main.js".to_owned(),
        "tiptap=client-wasm/demo/tiptap.js".to_owned(),
        "--bundle".to_owned(),
        "--format=esm".to_owned(),
        "--target=es2022".to_owned(),
        "--minify".to_owned(),
        "--sourcemap".to_owned(),
        format!("--alias:lattice-client={}", pkg.display()),
        format!("--outdir={}", out.display()),
    ];
    eprintln!(
        "$ NODE_PATH={} {} {}",
        tools.join("node_modules").display(),
        esbuild.display(),
        args.join(" ")
    );
    // The package lives outside any node_modules tree: NODE_PATH lets its bridge find `yjs`,
    // the same copy the demo uses.
    let status = Command::new(&esbuild)
        .args(&args)
        .env("NODE_PATH", tools.join("node_modules"))
        .status()
        .with_context(|| format!("could not start {}", esbuild.display()))?;
    if !status.success() {
        bail!("esbuild failed ({status})");
    }
    for (from, name) in [
        (
            Path::new("client-wasm/demo/index.html").to_path_buf(),
            "index.html",
        ),
        (
            Path::new("client-wasm/demo/demo.css").to_path_buf(),
            "demo.css",
        ),
        (
            Path::new("client-wasm/demo/tiptap.html").to_path_buf(),
            "tiptap.html",
        ),
        (
            Path::new("client-wasm/demo/tiptap.css").to_path_buf(),
            "tiptap.css",
        ),
        (pkg.join("lattice_client_bg.wasm"), "lattice_client_bg.wasm"),
    ] {
        std::fs::copy(&from, out.join(name))
            .with_context(|| format!("cannot copy {}", from.display()))?;
    }
    let js = std::fs::read(&bundle)?;
    let tiptap = std::fs::read(out.join("tiptap.js"))?;
    eprintln!(
        "demo: {} (demo.js {} bytes, {} gzipped; tiptap.js {} bytes, {} gzipped)",
        out.display(),
        js.len(),
        gzipped_len(&js)?,
        tiptap.len(),
        gzipped_len(&tiptap)?
    );
    Ok(())
}

fn write_package_json(pkg: &Path) -> Result<()> {
    // Written out by hand: the order of the `exports` conditions matters ("types" first).
    let text = format!(
        r#"{{
  "name": "lattice-client",
  "version": "{version}",
  "description": "Lattice browser client: offline-first CRDT documents synced over WebSocket (wasm)",
  "license": "MIT OR Apache-2.0",
  "type": "module",
  "main": "lattice_client.js",
  "module": "lattice_client.js",
  "types": "lattice_client.d.ts",
  "exports": {{
    ".": {{
      "types": "./lattice_client.d.ts",
      "default": "./lattice_client.js"
    }},
    "./yjs": {{
      "types": "./yjs.d.ts",
      "default": "./yjs.js"
    }},
    "./lattice_client_bg.wasm": "./lattice_client_bg.wasm"
  }},
  "files": [
    "lattice_client.js",
    "lattice_client.d.ts",
    "lattice_client_bg.wasm",
    "lattice_client_bg.wasm.d.ts",
    "yjs.js",
    "yjs.d.ts"
  ],
  "peerDependencies": {{
    "yjs": "^13.6.0"
  }},
  "peerDependenciesMeta": {{
    "yjs": {{
      "optional": true
    }}
  }},
  "sideEffects": false
}}
"#,
        version = client_version()?
    );
    std::fs::write(pkg.join("package.json"), text).context("cannot write package.json")
}

fn gzipped_len(bytes: &[u8]) -> Result<usize> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?.len())
}

fn report_size(wasm: &Path, js: &Path) -> Result<()> {
    let wasm_bytes =
        std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let js_bytes = std::fs::read(js).with_context(|| format!("cannot read {}", js.display()))?;
    let wasm_gz = gzipped_len(&wasm_bytes)?;
    eprintln!(
        "lattice_client_bg.wasm: {} bytes, {} gzipped (target {}); lattice_client.js: {} bytes, {} gzipped",
        wasm_bytes.len(),
        wasm_gz,
        WASM_GZIP_TARGET_BYTES,
        js_bytes.len(),
        gzipped_len(&js_bytes)?
    );
    if wasm_gz > WASM_GZIP_TARGET_BYTES {
        eprintln!(
            "note: the gzipped wasm is over its {WASM_GZIP_TARGET_BYTES}-byte target (docs/client.md, Size)"
        );
    }
    Ok(())
}

/// Runs `client-wasm/tests/web.rs` with wasm-bindgen-test in headless Chromium. A missing
/// browser or driver fails the step.
pub(crate) fn browser_tests() -> Result<()> {
    let chromedriver = setup::which("chromedriver").context(
        "chromedriver is not installed (Debian package chromium-driver; `cargo xtask setup`)",
    )?;
    setup::which("chromium").context("chromium is not installed (`cargo xtask setup`)")?;
    let root = std::env::current_dir()?;
    let webdriver_json = root.join("client-wasm").join("webdriver.json");
    eprintln!(
        "$ CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner CHROMEDRIVER={} cargo test -p lattice-client --target {TARGET}",
        chromedriver.display()
    );
    let status = Command::new("cargo")
        .args(["test", "-p", "lattice-client", "--target", TARGET])
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
            "wasm-bindgen-test-runner",
        )
        .env("CHROMEDRIVER", &chromedriver)
        .env("WASM_BINDGEN_TEST_WEBDRIVER_JSON", &webdriver_json)
        .env("WASM_BINDGEN_TEST_TIMEOUT", "120")
        .envs(setup::exported())
        .status()
        .context("could not start cargo")?;
    if !status.success() {
        bail!("the browser tests failed ({status})");
    }
    Ok(())
}
